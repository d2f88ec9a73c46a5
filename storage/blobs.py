"""Plain files (bytes) under a store's root, local or on an object store.

Training checkpoints live here (``checkpoints/<experiment>/<run_id>/epoch=N.pt``),
beside the Lance tables and reached the same way: a ``pyarrow.fs``
filesystem configured like the store's (``EmbeddingStore._filesystem``), so
``s3://`` roots use the store's credentials and endpoint. Bytes in, bytes
out: this module never imports torch.

A file appears whole or not at all: locally it is written under a temporary
name and renamed; on an object store a single upload becomes visible only
when it completes.
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from storage.store import EmbeddingStore

PARTIAL_SUFFIX = ".partial"


class BlobStore:
    """Read, write, list and delete files under the root of ``store``.

    Paths are relative to the store root, with ``/`` separators
    (``checkpoints/exp/run/epoch=3.pt``).
    """

    def __init__(self, store: EmbeddingStore):
        self.store = store

    def __repr__(self) -> str:
        return f"BlobStore({self.store.root!r})"

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return self.store._filesystem()

    def put(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` (replacing it), atomically."""
        fs, base = self._fs()
        target = f"{base}/{path}"
        parent = target.rsplit("/", 1)[0]
        if self.store.is_object_store:
            with fs.open_output_stream(target) as out:
                out.write(data)
            return
        fs.create_dir(parent, recursive=True)
        partial = f"{target}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        with fs.open_output_stream(partial) as out:
            out.write(data)
        os.replace(partial, target)

    def get(self, path: str) -> bytes:
        """The bytes of ``path``; FileNotFoundError if it does not exist."""
        fs, base = self._fs()
        with fs.open_input_stream(f"{base}/{path}") as stream:
            return stream.read()

    def exists(self, path: str) -> bool:
        fs, base = self._fs()
        return fs.get_file_info(f"{base}/{path}").type == pafs.FileType.File

    def list(self, prefix: str) -> list[str]:
        """Names of the files directly under folder ``prefix`` (no partial writes), sorted."""
        fs, base = self._fs()
        selector = pafs.FileSelector(f"{base}/{prefix}", allow_not_found=True)
        try:
            infos = fs.get_file_info(selector)
        except FileNotFoundError:
            return []
        return sorted(
            info.base_name
            for info in infos
            if info.type == pafs.FileType.File and not info.base_name.endswith(PARTIAL_SUFFIX)
        )

    def delete(self, path: str) -> None:
        """Remove ``path`` if it exists."""
        fs, base = self._fs()
        try:
            fs.delete_file(f"{base}/{path}")
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        """Remove folder ``prefix`` and everything under it, if it exists."""
        fs, base = self._fs()
        target = f"{base}/{prefix}"
        if fs.get_file_info(target).type == pafs.FileType.NotFound:
            return
        try:
            fs.delete_dir(target)
        except FileNotFoundError:  # removed meanwhile by another process
            pass
