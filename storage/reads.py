"""Reading the store: rows of any table, and one layer's embeddings as Arrow or NumPy.

Filters are pushed down to Lance (and the scalar indices ``optimize`` builds);
a layer is scanned batch by batch, so one larger than memory reads fine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from storage import schema as S
from storage.filters import where
from storage.row_keys import key_columns, key_columns_future
from storage.tables import StoreError, StoreTables
from storage.vectors import take_vectors

# Bytes of embeddings per scanned batch when streaming a layer into one array: small
# batches stay in cache between Lance's decode and the copy into the result, which
# read 50,000 x 2,048 float32 about twice as fast as materialising the table first.
SCAN_BATCH_BYTES = 2 << 20
# Bytes Lance may buffer from a local disk ahead of the decoder in such a scan. Its
# default (sized for object stores) read the same layer in 0.11-0.14 s, 8-32 MiB in
# 0.06-0.09 s; object-store roots keep the default, which keeps more requests in flight.
LOCAL_SCAN_IO_BUFFER_BYTES = 16 << 20
_TAKES = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stratalens-take")


class StoreReads(StoreTables):
    """The read methods of :class:`storage.EmbeddingStore`."""

    def read(
        self,
        table: str,
        *,
        columns: list[str] | None = None,
        filter: str | None = None,
        version: int | str | None = None,
    ) -> pa.Table:
        """Rows of ``table`` matching ``filter`` (pushed down to Lance)."""
        ds = self.dataset(table, version=version)
        if ds is None:
            schema = S.FIXED_SCHEMAS.get(table)
            if schema is None:
                raise StoreError(f"table {table!r} does not exist in store {self.root!r}")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        return ds.to_table(columns=columns, filter=filter)

    def layer_dataset(
        self, experiment_id: str, arch: str, layer: str, *, version: int | str | None = None
    ) -> lance.LanceDataset:
        """The Lance dataset of one layer at ``version``; one StoreError naming what is stored."""
        table = S.embeddings_table(experiment_id, arch, layer)
        try:
            ds = self.dataset(table, version=version)
        except ValueError as exc:
            if version is None:
                raise
            raise StoreError(f"table {table!r} has no version {version!r}: {exc}") from None
        if ds is None:
            known = sorted(
                t.rsplit("/", 1)[-1]
                for t in self.list_tables()
                if t.startswith(f"{S.EMBEDDINGS_PREFIX}/{experiment_id}/{arch}/")
            )
            raise StoreError(
                f"no embeddings for experiment {experiment_id!r}, arch {arch!r}, layer "
                f"{layer!r}; stored layers are {known or 'none'}"
            )
        return ds

    def embeddings(
        self,
        experiment_id: str,
        arch: str,
        layer: str,
        *,
        columns: list[str] | None = None,
        version: int | str | None = None,
        **conditions: Any,
    ) -> pa.Table:
        """Embedding rows of one layer, filtered by key columns (run_id, seed, split, ...).

        ``version`` (a number or a tag) reads the table as it was then.
        """
        ds = self.layer_dataset(experiment_id, arch, layer, version=version)
        return ds.to_table(columns=columns, filter=where(**conditions))

    def embedding_batches(
        self,
        experiment_id: str,
        arch: str,
        layer: str,
        *,
        columns: list[str],
        rows_per_batch: int = 8192,
        version: int | str | None = None,
        **conditions: Any,
    ) -> Iterator[pa.RecordBatch]:
        """``columns`` of one layer's matching rows, ``rows_per_batch`` at a time.

        For one pass over a layer larger than memory (class statistics, NCC).
        """
        ds = self.layer_dataset(experiment_id, arch, layer, version=version)
        return self.scan(ds, columns, where(**conditions), rows_per_batch)

    def embedding_array(
        self,
        experiment_id: str,
        arch: str,
        layer: str,
        *,
        version: int | str | None = None,
        dtype: np.dtype | None = np.float32,
        **conditions: Any,
    ) -> np.ndarray:
        """One layer's embeddings as an (n, d) array, in the order :meth:`embeddings` returns rows.

        Only the embedding column is scanned, in small batches copied straight into one
        preallocated array. float16 tables come back as float32 unless ``dtype=None``.
        """
        ds = self.layer_dataset(experiment_id, arch, layer, version=version)
        vector = ds.schema.field(S.EMBEDDING).type
        filter = where(**conditions)
        out = np.empty(
            (ds.count_rows(filter=filter), vector.list_size),
            dtype=dtype or vector.value_type.to_pandas_dtype(),
        )
        rows_per_batch = max(1, SCAN_BATCH_BYTES // (vector.list_size * out.itemsize))
        batches = self.scan(ds, [S.EMBEDDING], filter, rows_per_batch)
        _copy_vectors(out, (batch.column(0) for batch in batches))
        return out

    def scan(
        self,
        ds: lance.LanceDataset,
        columns: list[str],
        filter: str | None,
        rows_per_batch: int,
        **scanner: Any,
    ) -> Iterator[pa.RecordBatch]:
        """``columns`` of the rows of ``ds`` that match ``filter``, batch by batch.

        From local disk Lance reads ahead at most ``LOCAL_SCAN_IO_BUFFER_BYTES``.
        ``scanner`` passes further options to Lance's scanner (``limit``, ``offset``).
        """
        return ds.to_batches(
            columns=columns,
            filter=filter,
            batch_size=rows_per_batch,
            io_buffer_size=None if self.is_object_store else LOCAL_SCAN_IO_BUFFER_BYTES,
            **scanner,
        )

    def row_ids(
        self, ds: lance.LanceDataset, filter: str | None, columns: list[str] | None = None
    ) -> pa.Table:
        """``columns`` (none by default) and the row id (``ROW_ID``) of every row of ``ds``
        that matches ``filter``; the ids stay valid for this version of the table."""
        return ds.to_table(columns=columns or [], filter=filter, with_row_id=True)

    def take_rows(self, ds: lance.LanceDataset, ids: np.ndarray, columns: list[str]) -> pa.Table:
        """``columns`` of the rows of ``ds`` with row ids ``ids`` (from :meth:`row_ids` on
        the same version, so no deleted row among them), in the order given.

        The embedding column is read from the data files where their layout allows
        (:func:`storage.vectors.take_vectors`: 1,000 scattered rows of a 50,000 x 512
        layer in 2 ms, where Lance's take needs 8-10 ms); the others from the version's
        remembered key columns (:func:`storage.row_keys.key_columns`).
        """
        ids = np.asarray(ids, dtype=np.uint64)
        others = [c for c in columns if c != S.EMBEDDING]
        if S.EMBEDDING not in columns:
            return key_columns(ds, ids, others)
        # a layer too large for a remembered copy of its key columns asks Lance's take for
        # them on another thread while this one reads the vectors: 1.7 ms for 1,000 rows
        # with the GIL released, as long as the vectors need
        keys = key_columns_future(ds, ids, others, _TAKES) if others else None
        stored = ds.schema  # built anew on every access
        values = take_vectors(ds, ids).reshape(-1)
        taken = keys.result() if keys is not None else None
        arrays = {
            S.EMBEDDING: pa.FixedSizeListArray.from_arrays(
                pa.array(values), type=stored.field(S.EMBEDDING).type
            )
        }
        if taken is not None:
            arrays |= {name: taken.column(name) for name in others}
        schema = pa.schema([stored.field(name) for name in columns])
        return pa.table([arrays[name] for name in columns], schema=schema)


def embedding_matrix(
    rows: pa.Table, column: str = S.EMBEDDING, dtype: np.dtype | None = np.float32
) -> np.ndarray:
    """The ``fixed_size_list<float>[d]`` column of ``rows`` as an (n, d) array.

    float16 tables are returned as float32 unless ``dtype=None`` (the stored dtype).
    """
    vector = rows.schema.field(column).type
    out = np.empty(
        (rows.num_rows, vector.list_size), dtype=dtype or vector.value_type.to_pandas_dtype()
    )
    _copy_vectors(out, rows.column(column).chunks)
    return out


def _copy_vectors(out: np.ndarray, chunks: Iterable[pa.Array]) -> None:
    """Copy fixed-size-list chunks, one after another, into the rows of ``out``."""
    at = 0
    for chunk in chunks:  # one copy per chunk, straight into the result
        # flatten() honours a sliced chunk's offset, where .values would not
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), -1)
        out[at : at + len(values)] = values
        at += len(values)
