"""Catalog and row queries over a store, for readers that take names from outside
(the HTTP query service): every name is checked against the store's own lists
before a table path is built from it, and rows stream batch by batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from storage import schema as S
from storage.filters import where
from storage.reads import StoreReads
from storage.sample_rows import sample_row_ids
from storage.schema import ROW_ID
from storage.tables import StoreError, version_key
from storage.version_cache import VersionCache, one_entry

# Bytes of rows per streamed batch of a query (embeddings, metrics, pairs, clusterings):
# a 50,000 x 512 layer crossed loopback HTTP in 52-81 ms with 0.5-2 MiB batches (urllib
# client; curl 57-63 ms), 180 ms with 4 MiB and 251 ms with 64 MiB (uvicorn copies each
# chunk it frames; small chunks stay in cache and fit the socket buffer).
QUERY_BATCH_BYTES = 1 << 20
# Bytes of rows per take of named rows: 1,000 rows of 512 dims go in one take (a layer
# too large for a remembered copy of its key columns asks Lance for them once per take,
# 1.2 ms however few the rows).
TAKE_BATCH_BYTES = 4 << 20
# The catalog a request's names are checked against, remembered (see experiment_names
# and stored_layers).
NAME_CACHE_ENTRIES = 64
LAYER_NAMES_TTL_S = 2.0
_EXPERIMENT_NAMES: VersionCache[list[str]] = VersionCache(NAME_CACHE_ENTRIES, one_entry)
_LAYER_NAMES: dict[tuple, tuple[float, dict[str, list[str]]]] = {}
_LAYER_SCOPES: VersionCache[list[Scope]] = VersionCache(NAME_CACHE_ENTRIES, one_entry)
_NAMES_LOCK = threading.Lock()
# Estimated bytes of the key columns of one row, added to its vector when sizing batches.
KEY_COLUMN_BYTES = 64
# Columns an embeddings query answers with by default: the keys and the vector.
EMBEDDING_COLUMNS = [
    "run_id",
    "dataset_id",
    "seed",
    "epoch",
    "split",
    "sample_index",
    "subclass",
    "superclass",
    S.EMBEDDING,
]


class NotFoundError(StoreError):
    """A name (experiment, layer, sample ...) the store does not hold; the message lists
    the names it does hold."""


@dataclass(frozen=True)
class LayerInfo:
    """One stored layer: its architecture, name, vector dimension and row count."""

    arch: str
    layer: str
    dim: int
    rows: int
    dtype: str


@dataclass(frozen=True)
class RowStream:
    """Rows of one query: their schema, how many will come (None: not counted), and the
    batches."""

    schema: pa.Schema
    rows: int | None
    batches: Iterator[pa.RecordBatch]


def experiment_names(store: StoreReads) -> list[str]:
    """The experiment ids the store holds, sorted (remembered per version of the
    ``experiments`` table: reading them took 0.7 ms of every request)."""
    return list(_experiments(store)[1])


def _experiments(store: StoreReads) -> tuple[tuple | None, list[str]]:
    """The ``experiments`` table's version key (None: no table yet) and its experiment ids."""
    ds = store.dataset(S.EXPERIMENTS)
    if ds is None:
        return None, []
    key = version_key(ds)
    names = _EXPERIMENT_NAMES.get(
        key, lambda: sorted(ds.to_table(columns=["experiment_id"]).column(0).to_pylist())
    )
    return key, names


def stored_layers(store: StoreReads, experiment_id: str) -> dict[str, list[str]]:
    """{arch: [layer, ...]} of one checked experiment, as :meth:`EmbeddingStore.layer_names`
    lists them, remembered for ``LAYER_NAMES_TTL_S`` (a listing took ~0.6 ms of every
    request) and while the ``experiments`` table keeps its version: a layer written
    since may answer 404 for that long, an experiment deleted or written again is
    listed anew at once."""
    version, names = _experiments(store)
    _check_named(experiment_id, names)
    key = (store.root, experiment_id, version)
    now = time.monotonic()
    found = _LAYER_NAMES.get(key)
    if found is None or now - found[0] > LAYER_NAMES_TTL_S:
        found = (now, store.layer_names(experiment_id))
        _remember(_LAYER_NAMES, key, found)
    return {arch: list(layers) for arch, layers in found[1].items()}


def _remember(cache: dict, key, value) -> None:
    with _NAMES_LOCK:
        cache[key] = value
        while len(cache) > NAME_CACHE_ENTRIES:
            cache.pop(next(iter(cache)))


def check_experiment(store: StoreReads, name: str) -> str:
    """``name`` if the store holds that experiment; else a NotFoundError naming those it holds."""
    _check_named(name, experiment_names(store))
    return name


def _check_named(name: str, known: list[str]) -> None:
    if name not in known:
        raise NotFoundError(
            f"experiment {name!r} is not in the store; it holds {known or 'no experiments'}"
        )


def experiments(store: StoreReads) -> list[dict[str, Any]]:
    """Every experiment: name, spec (parsed), created_at and its number of finished runs."""
    rows = store.read(S.EXPERIMENTS, columns=["experiment_id", "spec", "created_at"]).to_pylist()
    runs = store.read(S.RUNS, columns=["experiment_id"]).column(0).to_pylist()
    return [
        {
            "name": row["experiment_id"],
            "spec": json.loads(row["spec"]),
            "created_at": row["created_at"],
            "runs": runs.count(row["experiment_id"]),
        }
        for row in sorted(rows, key=lambda row: row["experiment_id"])
    ]


def runs(store: StoreReads, experiment_id: str) -> pa.Table:
    """The runs rows of one (checked) experiment, sorted by dataset, arch and seed."""
    table = store.read(S.RUNS, filter=where(experiment_id=check_experiment(store, experiment_id)))
    return table.drop_columns([S.UNIT_KEY]).sort_by(
        [("dataset_id", "ascending"), ("arch", "ascending"), ("seed", "ascending")]
    )


def layers(store: StoreReads, experiment_id: str) -> list[LayerInfo]:
    """The stored layers of one (checked) experiment, by arch and layer name."""
    found = []
    for arch, names in stored_layers(store, experiment_id).items():
        for layer in names:
            ds = store.dataset(S.embeddings_table(experiment_id, arch, layer))
            if ds is None:  # being created
                continue
            vector = ds.schema.field(S.EMBEDDING).type
            found.append(
                LayerInfo(
                    arch,
                    layer,
                    vector.list_size,
                    ds.count_rows(),
                    np.dtype(vector.value_type.to_pandas_dtype()).name,
                )
            )
    return found


@dataclass(frozen=True, order=True)
class Scope:
    """One (run, epoch, split) that a layer holds rows of."""

    run_id: str
    epoch: int
    split: str


def layer_scopes(ds: lance.LanceDataset) -> list[Scope]:
    """The distinct (run, epoch, split) among the rows of one version of a layer table,
    sorted; remembered per version (a neighbour query checked its run, epoch and split
    with three filtered counts, a third of its time, and read a whole column to find
    the last epoch). A layer holds a few per run, however many rows. Rows with a null
    among the three are left out: no query can name them."""
    return list(_LAYER_SCOPES.get(version_key(ds), lambda: _read_scopes(ds)))


def _read_scopes(ds: lance.LanceDataset) -> list[Scope]:
    columns = ["run_id", "epoch", "split"]
    found: set[Scope] = set()
    for batch in ds.to_batches(columns=columns):  # a batch at a time: bounded memory
        distinct = pa.Table.from_batches([batch]).group_by(columns).aggregate([])
        found.update(
            Scope(**values)
            for values in distinct.to_pylist()
            if None not in values.values()  # no query can name a null
        )
    return sorted(found)


def check_layer(store: StoreReads, experiment_id: str, arch: str, layer: str) -> None:
    """Raise a NotFoundError naming the stored archs or layers unless (arch, layer) is stored
    for the (checked) experiment."""
    stored = stored_layers(store, experiment_id)
    if arch not in stored:
        raise NotFoundError(
            f"arch {arch!r} has no embeddings in experiment {experiment_id!r}; "
            f"stored archs are {sorted(stored) or 'none'}"
        )
    if layer not in stored[arch]:
        raise NotFoundError(
            f"layer {layer!r} of arch {arch!r} is not stored in experiment {experiment_id!r}; "
            f"stored layers are {stored[arch]}"
        )


def layer_rows(
    store: StoreReads,
    experiment_id: str,
    arch: str,
    layer: str,
    *,
    columns: list[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    count: bool = True,
    **conditions: Any,
) -> RowStream:
    """Matching rows of one checked layer, key columns and embedding by default.

    Streams ``QUERY_BATCH_BYTES`` at a time; ``limit`` and ``offset`` count matching
    rows in table order (that of :meth:`EmbeddingStore.embeddings`). Without ``count``
    the rows are not counted first (one index lookup less); ``rows`` is then None.
    Rows named by ``sample_index`` are found through the layer's sample map
    (:mod:`storage.sample_rows`) or, for a layer too large for it, the scalar index,
    then taken by row id (:func:`_taken`), and always counted.
    """
    check_layer(store, experiment_id, arch, layer)
    ds = store.layer_dataset(experiment_id, arch, layer)
    columns = columns or EMBEDDING_COLUMNS
    row_bytes = ds.schema.field(S.EMBEDDING).type.list_size * 4 + KEY_COLUMN_BYTES
    samples = conditions.pop("sample_index", None)
    if samples is not None:  # named rows: their row ids, then a take
        samples = np.atleast_1d(np.asarray(samples, dtype=np.int64))
        ids = sample_row_ids(ds, samples, where(**conditions))
        if ids is None:
            filter = where(**conditions, sample_index=samples.tolist())
            ids = store.row_ids(ds, filter).column(ROW_ID).to_numpy()
        return _taken(store, ds, columns, ids, row_bytes, limit, offset)
    return _stream(store, ds, columns, where(**conditions), row_bytes, limit, offset, count)


def table_rows(
    store: StoreReads,
    table: str,
    experiment_id: str,
    *,
    columns: list[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    row_bytes: int = KEY_COLUMN_BYTES * 4,
    sql: str | None = None,
    **conditions: Any,
) -> RowStream:
    """Matching rows of one fixed table (metrics, pairs, clusterings) of a checked experiment.

    Every column but ``unit_key`` unless ``columns`` says otherwise. ``sql`` is one more
    condition, written by the caller (never taken from a request).
    """
    if table not in S.FIXED_SCHEMAS:
        raise StoreError(f"table {table!r} is not one of {sorted(S.FIXED_SCHEMAS)}")
    check_experiment(store, experiment_id)
    schema = S.FIXED_SCHEMAS[table]
    columns = columns or [name for name in schema.names if name != S.UNIT_KEY]
    filter = where(experiment_id=experiment_id, **conditions)
    if sql:
        filter = f"{filter} AND ({sql})"
    ds = store.dataset(table)
    if ds is None:
        empty = pa.schema([schema.field(name) for name in columns])
        return RowStream(empty, 0, iter(()))
    return _stream(store, ds, columns, filter, row_bytes, limit, offset)


def distinct(store: StoreReads, table: str, column: str, **conditions: Any) -> list:
    """The distinct values of ``column`` among the rows of ``table`` that match, sorted."""
    rows = store.read(table, columns=[column], filter=where(**conditions))
    return sorted(v for v in rows.column(0).unique().to_pylist() if v is not None)


def thumbnail(store: StoreReads, dataset_id: str, split: str, sample_index: int) -> bytes:
    """The stored PNG of one sample; NotFoundError naming what is missing.

    Optional per split: a samples row may have none (``options.thumbnails``).
    """
    datasets = distinct(store, S.SAMPLES, "dataset_id")
    if dataset_id not in datasets:
        raise NotFoundError(
            f"dataset {dataset_id!r} has no samples in the store; it holds {datasets or 'none'}"
        )
    splits = distinct(store, S.SAMPLES, "split", dataset_id=dataset_id)
    if split not in splits:
        raise NotFoundError(f"dataset {dataset_id!r} has no split {split!r}; it has {splits}")
    rows = store.read(
        S.SAMPLES,
        columns=["thumbnail"],
        filter=where(dataset_id=dataset_id, split=split, sample_index=int(sample_index)),
    )
    if rows.num_rows == 0:
        raise NotFoundError(
            f"split {split!r} of dataset {dataset_id!r} has no sample_index {sample_index}"
        )
    png = rows.column(0)[0].as_py()
    if not png:
        raise NotFoundError(
            f"sample {sample_index} of {dataset_id!r} {split!r} has no thumbnail: the "
            "dataset's options.thumbnails left them out for this split"
        )
    return png


def _taken(
    store: StoreReads,
    ds: lance.LanceDataset,
    columns: list[str],
    ids: np.ndarray,
    row_bytes: int,
    limit: int | None,
    offset: int,
) -> RowStream:
    """The rows of ``ds`` with row ids ``ids`` (a few named rows), ``limit`` after
    ``offset`` in table order (:meth:`EmbeddingStore.take_rows`), ``TAKE_BATCH_BYTES``
    at a time. The count is free.

    1,000 random rows of a 50,000 x 512 layer: 0.15 ms for the ids from the sample map
    (3 ms through Lance's scalar index), 0.25 ms for the key columns from their
    remembered copy (1.7 ms by Lance's take) and 1.3-2 ms for the embeddings read from
    the files, where Lance's take of every column needed 8-10 ms and a filtered scan
    12-16 ms (2 cores).
    """
    schema = _check_columns(ds, columns)
    ids = _in_table_order(ds, ids)
    ids = ids[offset : None if limit is None else offset + limit]

    rows_per_batch = max(1, TAKE_BATCH_BYTES // row_bytes)

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(ids), rows_per_batch):
            # the ids were just read from this version: no deleted row among them
            taken = store.take_rows(ds, ids[start : start + rows_per_batch], columns)
            yield from taken.to_batches()

    return RowStream(schema, len(ids), batches())


def _in_table_order(ds: lance.LanceDataset, ids: np.ndarray) -> np.ndarray:
    """Row ids (fragment id << 32 | row offset) sorted as a scan returns the rows: by the
    fragment's place in the manifest (the order a scan reads them in, along which the
    ids need not ascend), then by offset."""
    fragments = np.array([f.fragment_id for f in ds.get_fragments()], dtype=np.uint64)
    by_id = np.argsort(fragments)  # manifest places, by fragment id
    ids = ids.astype(np.uint64, copy=False)
    fragment_place = by_id[np.searchsorted(fragments[by_id], ids >> np.uint64(32))]
    fragment_place = fragment_place.astype(np.uint64)
    keys = (fragment_place << np.uint64(32)) | (ids & np.uint64(0xFFFFFFFF))
    return ids[np.argsort(keys, kind="stable")]


def _check_columns(ds: lance.LanceDataset, columns: list[str]) -> pa.Schema:
    """The schema of ``columns`` of ``ds``; a StoreError names any it does not have."""
    stored = ds.schema  # built anew on every access
    missing = [c for c in columns if c not in stored.names]
    if missing:
        raise StoreError(f"columns {missing} are not in the table; it has {stored.names}")
    return pa.schema([stored.field(name) for name in columns])


def _stream(
    store: StoreReads,
    ds: lance.LanceDataset,
    columns: list[str],
    filter: str | None,
    row_bytes: int,
    limit: int | None,
    offset: int,
    count: bool = True,
) -> RowStream:
    """The rows of one dataset version that match, ``limit`` after ``offset``."""
    schema = _check_columns(ds, columns)
    rows = None
    if count:
        rows = max(0, ds.count_rows(filter=filter) - offset)
        rows = rows if limit is None else min(rows, limit)
        if rows == 0:
            return RowStream(schema, 0, iter(()))
        limit = rows
    batches = store.scan(
        ds,
        columns,
        filter,
        max(1, QUERY_BATCH_BYTES // row_bytes),
        limit=limit,
        offset=offset or None,
    )
    return RowStream(schema, rows, batches)
