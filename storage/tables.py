"""Where the store's tables live: one Lance dataset per table under one root URI.

:class:`StoreTables` opens, lists and locates tables; the readers
(:mod:`storage.reads`), the version tags (:mod:`storage.versions`) and the
writers (:mod:`storage.store`) build on it.
"""

from __future__ import annotations

import os

import lance
import pyarrow.fs as pafs

from storage import schema as S


class StoreError(ValueError):
    """Bad input to the store; the store is left unchanged."""


class StoreTables:
    """Table access shared by every part of :class:`storage.EmbeddingStore`.

    Subclasses set ``root`` (a local path or an object-store URI, no trailing
    slash), ``storage_options`` (Lance's options for object stores, or None) and
    ``session`` (a ``lance.Session`` every dataset is opened with, or None).
    """

    root: str
    storage_options: dict[str, str] | None
    session: lance.Session | None = None

    @property
    def is_object_store(self) -> bool:
        """Whether the root is a URI (``s3://...``) rather than a local path."""
        return "://" in self.root

    def uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def dataset(self, table: str, *, version: int | str | None = None) -> lance.LanceDataset | None:
        """The Lance dataset behind ``table``, or ``None`` when it does not exist yet."""
        if not self._has_table_files(table):
            return None
        try:
            return lance.dataset(
                self.uri(table),
                version=version,
                storage_options=self.storage_options,
                session=self.session,
            )
        except ValueError as exc:
            # Being created by another writer: the folder is there, no version yet.
            if version is None and "not found" in str(exc).lower():
                return None
            raise

    def exists(self, table: str) -> bool:
        return self._has_table_files(table)

    def list_tables(self) -> list[str]:
        """Every table under the root, fixed tables and embeddings tables alike."""
        fs, base = self._filesystem()
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        tables = []
        for info in infos:
            if info.type == pafs.FileType.Directory and info.base_name == "_versions":
                tables.append(info.path[len(base) + 1 : -len("/_versions")])
        return sorted(tables)

    def layer_names(self, experiment_id: str) -> dict[str, list[str]]:
        """{arch: [layer, ...]} of the embeddings tables of one experiment, sorted.

        Lists two folder levels under ``embeddings/<experiment_id>`` only, so it stays
        quick however many data files the store holds.
        """
        fs, base = self._filesystem()
        found: dict[str, list[str]] = {}
        for arch in _folders(fs, f"{base}/{S.EMBEDDINGS_PREFIX}/{experiment_id}"):
            layers = [
                layer
                for layer in _folders(fs, arch.path)
                if self._has_table_files(
                    f"{S.EMBEDDINGS_PREFIX}/{experiment_id}/{arch.base_name}/{layer.base_name}"
                )
            ]
            if layers:
                found[arch.base_name] = sorted(layer.base_name for layer in layers)
        return dict(sorted(found.items()))

    def check_reachable(self) -> None:
        """Raise one clear StoreError when an object-store root's bucket cannot be reached."""
        if not self.is_object_store:
            return
        fs, base = self._filesystem()
        bucket = base.split("/")[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as exc:
            raise StoreError(
                f"cannot reach store {self.root!r} ({str(exc).splitlines()[0]}); "
                "check the endpoint and credentials"
            ) from None
        if info.type == pafs.FileType.NotFound:
            raise StoreError(
                f"bucket {bucket!r} of store {self.root!r} does not exist; create it or fix --store"
            )

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem for listing and deleting tables, configured like Lance."""
        if not self.is_object_store:
            return pafs.LocalFileSystem(), os.path.abspath(self.root)
        scheme, _, path = self.root.partition("://")
        if scheme == "s3":
            return pafs.S3FileSystem(**_s3_options(self.storage_options or {})), path.rstrip("/")
        fs, path = pafs.FileSystem.from_uri(self.root)
        return fs, path.rstrip("/")

    def _has_table_files(self, table: str) -> bool:
        fs, base = self._filesystem()
        return fs.get_file_info(f"{base}/{table}/_versions").type == pafs.FileType.Directory


def _folders(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The folders directly under ``path`` (none if it does not exist)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return [info for info in infos if info.type == pafs.FileType.Directory]


def _s3_options(options: dict[str, str]) -> dict[str, str]:
    """pyarrow ``S3FileSystem`` arguments from Lance storage options, else the environment."""

    def pick(*names: str) -> str | None:
        for name in names:
            value = options.get(name) or os.environ.get(name.upper())
            if value:
                return value
        return None

    kwargs = {
        "access_key": pick("aws_access_key_id"),
        "secret_key": pick("aws_secret_access_key"),
        "session_token": pick("aws_session_token"),
        "region": pick("aws_region", "aws_default_region"),
        "endpoint_override": pick("aws_endpoint", "aws_endpoint_url"),
    }
    return {key: value for key, value in kwargs.items() if value}


def version_key(ds: lance.LanceDataset) -> tuple:
    """What identifies the contents of one version of a table, for caches keyed on it:
    its path, its version number and its first data file (named at random when
    written), since a table deleted and written again starts over at version 1."""
    fragments = ds.get_fragments()
    first = fragments[0].data_files()[0].path if fragments else None
    return (ds.uri, ds.version, first)
