"""The key columns (every column but the embedding) of a layer's rows by row id, from a
remembered copy.

Lance's take of the key columns of even ten rows costs about 1.7 ms (a plan, a read
and a decode per column), which was half of an indexed neighbour search of a 50,000 x
512 layer and the larger part of a 1,000-row take. A copy of one version's key columns,
sorted by row id with the strings dictionary-coded, answers the same by binary search
in a few hundredths of that. It costs about ``BYTES_PER_ROW`` bytes a row (50,000 rows:
3 MB; a 1.28 M-row ImageNet layer: 80 MB) and is built by one scan of those columns,
so copies are kept for the most recently asked versions up to ``ROW_KEYS_BYTES`` in
all; a larger layer is asked of Lance every time.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass

import lance
import numpy as np
import pyarrow as pa

from storage import schema as S
from storage.schema import ROW_ID
from storage.tables import version_key
from storage.version_cache import VersionCache

ROW_KEYS_BYTES = 256 << 20  # all remembered copies together
BYTES_PER_ROW = 64  # the row id, dictionary codes of the strings, the integers
COPIES: VersionCache[_RowKeys] = VersionCache(ROW_KEYS_BYTES)
COPY_BATCH_ROWS = 65_536  # rows scanned at a time while a copy is built


@dataclass(frozen=True)
class _RowKeys:
    row_ids: np.ndarray  # uint64, sorted
    columns: dict[str, pa.Array]  # each in the order of row_ids; strings dictionary-coded

    @property
    def nbytes(self) -> int:
        return self.row_ids.nbytes + sum(array.nbytes for array in self.columns.values())


def key_columns(ds: lance.LanceDataset, row_ids: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` (not the embedding) of the rows of ``ds`` with ``row_ids`` (row addresses
    of this version), in the order given, typed as stored.

    From the version's remembered copy when it fits ``ROW_KEYS_BYTES``, else Lance's take.
    A row id that is not a row of this version raises ValueError.
    """
    return key_columns_future(ds, row_ids, columns, pool=None).result()


def key_columns_future(
    ds: lance.LanceDataset, row_ids: np.ndarray, columns: list[str], pool: Executor | None
) -> Future[pa.Table]:
    """:func:`key_columns` as a future, for a caller with other reads to make meanwhile:
    answered at once from the remembered copy (built first, in this thread, if need
    be), or by Lance's take on ``pool`` (its GIL-free 1.7 ms overlap the caller's work;
    in this thread when ``pool`` is None)."""
    row_ids = np.asarray(row_ids, dtype=np.uint64)
    copy = COPIES.get(
        version_key(ds),
        build=lambda: _copy(ds),
        estimate=lambda: ds.count_rows() * BYTES_PER_ROW,
    )
    if copy is None and pool is not None:
        return pool.submit(ds._take_rows, pa.array(row_ids), columns)
    answer: Future[pa.Table] = Future()
    if copy is None:
        answer.set_result(ds._take_rows(pa.array(row_ids), columns))
    else:
        answer.set_result(_taken(ds, copy, row_ids, columns))
    return answer


def _taken(
    ds: lance.LanceDataset, copy: _RowKeys, row_ids: np.ndarray, columns: list[str]
) -> pa.Table:
    at = np.searchsorted(copy.row_ids, row_ids)
    found = at < len(copy.row_ids)
    found[found] = copy.row_ids[at[found]] == row_ids[found]
    if not found.all():
        raise ValueError(
            f"row ids {row_ids[~found][:3].tolist()} are not rows of this version of the table"
        )
    stored = ds.schema
    positions = pa.array(at)
    fields = [stored.field(name) for name in columns]
    arrays = []
    for field in fields:
        taken = copy.columns[field.name].take(positions)
        if pa.types.is_dictionary(taken.type):
            taken = taken.dictionary_decode()
        arrays.append(taken.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _copy(ds: lance.LanceDataset) -> _RowKeys:
    """The key columns of every row, scanned a batch at a time (the strings coded per
    batch, so that at most one batch of them is held as text), then sorted by row id."""
    fields = [field for field in ds.schema if field.name != S.EMBEDDING]
    ids: list[np.ndarray] = []
    chunks: dict[str, list[pa.Array]] = {field.name: [] for field in fields}
    names = list(chunks)
    for batch in ds.to_batches(columns=names, with_row_id=True, batch_size=COPY_BATCH_ROWS):
        ids.append(batch.column(ROW_ID).to_numpy())
        for field in fields:
            values = batch.column(field.name)
            chunks[field.name].append(values.dictionary_encode() if _coded(field) else values)
    row_ids = np.concatenate(ids) if ids else np.empty(0, dtype=np.uint64)
    order = pa.array(np.argsort(row_ids, kind="stable"))
    columns = {}
    for field in fields:
        kind = pa.dictionary(pa.int32(), field.type) if _coded(field) else field.type
        values = pa.chunked_array(chunks.pop(field.name), type=kind)
        if _coded(field):
            values = values.unify_dictionaries()
        columns[field.name] = values.combine_chunks().take(order)
    return _RowKeys(row_ids[order.to_numpy()], columns)


def _coded(field: pa.Field) -> bool:
    return pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
