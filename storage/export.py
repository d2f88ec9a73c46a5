"""Export one stored layer to a .npy, .parquet or .arrow file in bounded memory.

Layers of a large study do not fit in memory (ResNet-50's pooled block outputs
for ImageNet train are ~77 GB per seed), so rows stream from Lance to the file
one batch at a time, and the file appears whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import schema as S
from storage.filters import where
from storage.reads import SCAN_BATCH_BYTES
from storage.tables import StoreError

if TYPE_CHECKING:
    import lance

    from storage.store import EmbeddingStore

EXPORT_SUFFIXES = (".npy", ".parquet", ".arrow")
# Bytes of rows per Parquet row group or Arrow record batch written (.npy files are
# written in the store's smaller scan batches).
EXPORT_BATCH_BYTES = 16 << 20


def export_format(path: str | os.PathLike) -> str:
    """The file format ``path`` names by its suffix, one of ``EXPORT_SUFFIXES``."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise StoreError(
            f"output {str(path)!r} has suffix {suffix or 'none'!r}; use .npy, .parquet or .arrow"
        )
    return suffix


def export_layer(
    store: EmbeddingStore,
    experiment_id: str,
    arch: str,
    layer: str,
    path: str | os.PathLike,
    *,
    version: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **conditions: Any,
) -> tuple[int, int]:
    """Write the rows of one layer that match ``conditions`` to ``path``; (rows, dimension).

    ``.npy`` holds the (n, d) float32 embeddings in the order of
    :meth:`EmbeddingStore.embeddings`; ``.parquet`` and ``.arrow`` (the Arrow IPC
    file format) hold every column but ``unit_key``. Either is written batch by
    batch, so memory holds a batch and Lance's read-ahead (see
    :meth:`EmbeddingStore.scan`) whatever the layer's size. Rows go to
    ``<path>.partial``, renamed to ``path`` once complete, so a failed export leaves
    no file behind. ``progress(rows_done, rows_total)`` is called after each batch.
    """
    path = Path(path)
    suffix = export_format(path)
    ds = store.layer_dataset(experiment_id, arch, layer, version=version)
    filter = where(**conditions)
    total = ds.count_rows(filter=filter)
    if total == 0:
        raise StoreError(f"no embeddings match {filter}; loosen the filters")
    partial = path.with_name(path.name + ".partial")
    try:
        if suffix == ".npy":
            shape = _write_npy(store, ds, partial, filter, total, progress)
        else:
            shape = _write_arrow(store, ds, partial, suffix, filter, total, progress)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return shape


def _write_npy(
    store: EmbeddingStore,
    ds: lance.LanceDataset,
    partial: Path,
    filter: str | None,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    dim = ds.schema.field(S.EMBEDDING).type.list_size
    dtype = np.dtype(np.float32)
    batch_rows = max(1, SCAN_BATCH_BYTES // (dim * dtype.itemsize))
    done = 0  # ds is one version, so its scan yields the `total` rows counted
    with open(partial, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(f, header | {"shape": (total, dim)})
        for batch in store.scan(ds, [S.EMBEDDING], filter, batch_rows):
            # flatten() honours a sliced chunk's offset; float16 tables become float32
            vectors = batch.column(0).flatten().to_numpy(zero_copy_only=False)
            f.write(memoryview(vectors.astype(dtype, copy=False)))
            done += batch.num_rows
            if progress is not None:
                progress(done, total)
    return total, dim


def _write_arrow(
    store: EmbeddingStore,
    ds: lance.LanceDataset,
    partial: Path,
    suffix: str,
    filter: str | None,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    columns = [name for name in ds.schema.names if name != S.UNIT_KEY]
    schema = pa.schema([ds.schema.field(name) for name in columns])
    vector = schema.field(S.EMBEDDING).type
    row_bytes = vector.list_size * vector.value_type.byte_width + 64  # + the key columns
    batches = store.scan(ds, columns, filter, max(1, EXPORT_BATCH_BYTES // row_bytes))
    writer = (
        pq.ParquetWriter(partial, schema)
        if suffix == ".parquet"
        else pa.ipc.new_file(partial, schema)
    )
    done = 0
    with writer:
        for batch in batches:
            writer.write_batch(batch)
            done += batch.num_rows
            if progress is not None:
                progress(done, total)
    return done, vector.list_size
