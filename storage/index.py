"""Vector indices on a layer's embeddings, and nearest-neighbour search over a layer.

``build_index`` builds a Lance vector index on the ``embedding`` column of one
layer table (``stratalens index``); ``nearest`` answers the k nearest rows of a
layer to a vector, through that index when one answers the asked distance and
with an exact scan (Lance's flat search: every matching vector, bounded memory)
otherwise, and says which it used. Filters (run, epoch, split) are applied
before the search, so the k rows all match them (and left out when every row of
the layer matches them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from storage import schema as S
from storage.filters import where
from storage.queries import check_layer, layer_rows
from storage.reads import StoreReads, embedding_matrix
from storage.row_keys import key_columns
from storage.schema import ROW_ID
from storage.tables import StoreError, version_key
from storage.vectors import take_vectors
from storage.version_cache import VersionCache, one_entry

# Index statistics without the centroids (Lance warns that they will be left out by default).
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")

METRICS = ("cosine", "l2")
DEFAULT_METRIC = "cosine"
# IVF_HNSW_SQ: HNSW graphs inside IVF partitions over 8-bit scalar-quantised vectors.
# At 50,000 x 512 it built in 3-13 s and answered k=10 in 2-5 ms at recall@10
# 0.96-1.00, where IVF_PQ took 96-131 s to build and 6-12 ms for recall >= 0.99
# (2-core machine; `stratalens bench serve` and a comparison script).
INDEX_TYPES = ("IVF_HNSW_SQ", "IVF_PQ")
DEFAULT_INDEX_TYPE = "IVF_HNSW_SQ"
INDEX_NAME = "embedding_idx"
# Rows per IVF partition when the partition count is not given (50,000 rows: 16).
ROWS_PER_PARTITION = 3_000
# PQ sub-vectors: dimension / PQ_DIMS_PER_SUBVECTOR (512 -> 128; the dimension must divide).
PQ_DIMS_PER_SUBVECTOR = 4
# Search knobs: IVF partitions probed, HNSW candidate list size, and how many times k
# candidates are re-ranked on the stored vectors (by _indexed_nearest, as Lance's
# refine_factor would), so that quantisation errors neither reorder the answer nor
# drop true neighbours. At 50,000 x 512 (200
# Gaussian clusters) these gave recall@10 0.997 in 3.4 ms; 4 / 100 / 2 gave 1.000 in
# 4.6 ms, and without re-ranking recall fell to 0.96 (exact scan: 40 ms).
SEARCH_NPROBES = 2
SEARCH_EF = 40
SEARCH_REFINE_FACTOR = 2
MAX_K = 1_000
INDEX_INFO_ENTRIES = 256  # (table, version) pairs whose vector index is remembered
_INDEX_INFO: VersionCache[VectorIndex | None] = VersionCache(INDEX_INFO_ENTRIES, one_entry)
# (table, version, filter) -> whether the filter matches every row of that version
_EVERY_ROW: VersionCache[bool] = VersionCache(INDEX_INFO_ENTRIES, one_entry)
NEIGHBOR_COLUMNS = ["run_id", "dataset_id", "seed", "epoch", "split", "sample_index"] + [
    "subclass",
    "superclass",
]


@dataclass(frozen=True)
class VectorIndex:
    """A vector index of one layer: its Lance type, distance, and rows it covers."""

    name: str
    index_type: str
    metric: str
    indexed_rows: int
    unindexed_rows: int


@dataclass(frozen=True)
class Neighbors:
    """The k nearest rows (``NEIGHBOR_COLUMNS`` plus ``distance``, nearest first) and how
    they were found: ``search`` is ``"index"`` or ``"exact"``."""

    rows: pa.Table
    search: str
    metric: str
    index: VectorIndex | None
    reason: str


def build_index(
    store: StoreReads,
    experiment_id: str,
    arch: str,
    layer: str,
    *,
    index_type: str = DEFAULT_INDEX_TYPE,
    metric: str = DEFAULT_METRIC,
    num_partitions: int | None = None,
) -> VectorIndex:
    """Build (or replace) the vector index of one stored layer; what was built.

    Rows appended later are searched exactly next to the index until it is built again.
    """
    check_layer(store, experiment_id, arch, layer)
    if index_type not in INDEX_TYPES:
        raise StoreError(f"index type {index_type!r} is not one of {list(INDEX_TYPES)}")
    metric = _check_metric(metric)
    ds = store.layer_dataset(experiment_id, arch, layer)
    rows, dim = ds.count_rows(), ds.schema.field(S.EMBEDDING).type.list_size
    if num_partitions is None:
        num_partitions = max(1, round(rows / ROWS_PER_PARTITION))
    if not 1 <= num_partitions <= max(1, rows // 2):
        raise StoreError(
            f"num_partitions={num_partitions} does not fit a layer of {rows} rows; "
            f"use 1 to {max(1, rows // 2)}"
        )
    options: dict[str, Any] = {"num_partitions": num_partitions}
    if index_type == "IVF_PQ":
        if dim % PQ_DIMS_PER_SUBVECTOR:
            raise StoreError(
                f"IVF_PQ needs a dimension divisible by {PQ_DIMS_PER_SUBVECTOR}, layer "
                f"{layer!r} has {dim}; use --type IVF_HNSW_SQ"
            )
        options["num_sub_vectors"] = dim // PQ_DIMS_PER_SUBVECTOR
    ds.create_index(
        S.EMBEDDING, index_type, name=INDEX_NAME, metric=metric, replace=True, **options
    )
    built = vector_index(store, experiment_id, arch, layer)
    assert built is not None  # just created
    return built


def vector_index(
    store: StoreReads, experiment_id: str, arch: str, layer: str
) -> VectorIndex | None:
    """The vector index of one stored layer, or None when it has none."""
    return _vector_index(store.layer_dataset(experiment_id, arch, layer))


def _vector_index(ds: lance.LanceDataset) -> VectorIndex | None:
    """``vector_index`` of an opened dataset, remembered per (table, version): a version's
    indices never change, and reading their statistics took a tenth of a search."""
    return _INDEX_INFO.get(version_key(ds), lambda: _read_vector_index(ds))


def _matches_every_row(ds: lance.LanceDataset, filter: str) -> bool:
    """Whether every row of this version of ``ds`` matches ``filter`` (two indexed counts,
    remembered per table, version and filter).

    A layer usually holds one run at one epoch and split, which is what a neighbour query
    is scoped to; the search then needs no prefilter, which took a third of the time
    of an indexed search and of an exact scan of a 50,000 x 512 layer.
    """
    return _EVERY_ROW.get(
        (*version_key(ds), filter), lambda: ds.count_rows(filter=filter) == ds.count_rows()
    )


def _read_vector_index(ds: lance.LanceDataset) -> VectorIndex | None:
    for index in ds.list_indices():
        if index["fields"] == [S.EMBEDDING]:
            stats = ds.stats.index_stats(index["name"])
            return VectorIndex(
                name=index["name"],
                index_type=stats["index_type"],
                metric=str(stats["indices"][0]["metric_type"]).lower(),
                indexed_rows=int(stats["num_indexed_rows"]),
                unindexed_rows=int(stats["num_unindexed_rows"]),
            )
    return None


def nearest(
    store: StoreReads,
    experiment_id: str,
    arch: str,
    layer: str,
    vector: np.ndarray,
    k: int,
    *,
    metric: str = DEFAULT_METRIC,
    exact: bool = False,
    **conditions: Any,
) -> Neighbors:
    """The ``k`` rows of one layer nearest to ``vector`` (d,) among those matching
    ``conditions``; through the layer's index when it answers ``metric``, unless ``exact``.

    The layer is opened as :meth:`EmbeddingStore.layer_dataset` does (a StoreError names
    the stored layers); callers that take names from outside check them first
    (:func:`storage.queries.check_layer`), as the query service does.
    """
    metric = _check_metric(metric)
    if not 1 <= k <= MAX_K:
        raise StoreError(f"k={k} is out of range; ask for 1 to {MAX_K} neighbours")
    ds = store.layer_dataset(experiment_id, arch, layer)
    dim = ds.schema.field(S.EMBEDDING).type.list_size
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape != (dim,):
        raise StoreError(
            f"the query vector has {query.size} values, layer {layer!r} has dimension {dim}; "
            "send one value per dimension"
        )
    if not np.isfinite(query).all() or (metric == "cosine" and not query.any()):
        raise StoreError("the query vector must be finite (and not all zeros for cosine)")
    index = _vector_index(ds)
    use_index, reason = _choose(index, metric, exact)
    filter = where(**conditions)
    if filter is not None and _matches_every_row(ds, filter):
        filter = None  # the same rows, without a prefilter pass over the layer
    if use_index:
        rows = _indexed_nearest(
            ds, query, k, metric, filter, fully_indexed=not index.unindexed_rows
        )
    else:
        rows = ds.to_table(
            columns=[*NEIGHBOR_COLUMNS, "_distance"],
            nearest={
                "column": S.EMBEDDING,
                "q": query,
                "k": k,
                "metric": metric,
                "use_index": False,
            },
            filter=filter,
            prefilter=filter is not None,
        )
        rows = rows.rename_columns([*NEIGHBOR_COLUMNS, "distance"])
    return Neighbors(rows, "index" if use_index else "exact", metric, index, reason)


def _indexed_nearest(
    ds: lance.LanceDataset, query: np.ndarray, k: int, metric: str, filter, *, fully_indexed: bool
) -> pa.Table:
    """The k nearest rows through the vector index: ``SEARCH_REFINE_FACTOR`` x k candidates
    from the index (quantised distances), re-ranked on their stored vectors (read by
    :func:`storage.vectors.take_vectors`), then the k rows' key columns
    (:func:`storage.row_keys.key_columns`: 0.2 ms, where Lance's take needed 1.7 ms).

    Lance's own re-ranking (``refine_factor``) gave the same rows; doing it here took 3.1
    against 3.8 ms a query at 50,000 x 512 (the candidates' vectors read in 0.05 ms). A
    layer whose rows are all indexed is searched with ``fast_search`` (no flat search of
    unindexed rows beside the index)."""
    found = ds.to_table(
        columns=["_distance"],
        with_row_id=True,
        nearest={
            "column": S.EMBEDDING,
            "q": query,
            "k": k * SEARCH_REFINE_FACTOR,
            "metric": metric,
            "nprobes": SEARCH_NPROBES,
            "ef": SEARCH_EF,
        },
        filter=filter,
        prefilter=filter is not None,
        fast_search=fully_indexed,
    )
    ids = found.column(ROW_ID).to_numpy()
    distances = _distances(take_vectors(ds, ids).astype(np.float64), query, metric)
    best = np.argsort(distances, kind="stable")[:k]
    rows = key_columns(ds, ids[best], NEIGHBOR_COLUMNS)
    return rows.append_column("distance", pa.array(distances[best].astype(np.float32)))


def _distances(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Lance's distances of ``vectors`` (n, d) to ``query``: squared L2, or 1 - cosine."""
    query = query.astype(np.float64)
    if metric == "l2":
        return ((vectors - query) ** 2).sum(axis=1)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    return 1.0 - (vectors @ query) / np.where(norms > 0, norms, 1.0)


def row_vector(
    store: StoreReads,
    experiment_id: str,
    arch: str,
    layer: str,
    *,
    sample_index: int,
    **conditions: Any,
) -> np.ndarray:
    """The embedding (d,) float32 of the one row of sample ``sample_index`` matching
    ``conditions``, found as named rows are (:func:`storage.queries.layer_rows`)."""
    found = layer_rows(
        store,
        experiment_id,
        arch,
        layer,
        columns=[S.EMBEDDING],
        sample_index=[sample_index],
        **conditions,
    )
    if found.rows != 1:
        shown = where(sample_index=sample_index, **conditions)
        raise StoreError(
            f"{found.rows} rows of layer {layer!r} match {shown}; name one sample "
            "(a run, an epoch, a split and a sample_index)"
        )
    rows = pa.Table.from_batches(list(found.batches), schema=found.schema)
    return embedding_matrix(rows)[0]


def _choose(index: VectorIndex | None, metric: str, exact: bool) -> tuple[bool, str]:
    """Whether to search through ``index``, and why (one phrase)."""
    if exact:
        return False, "an exact scan was asked for"
    if index is None:
        return False, "the layer has no vector index (build one with `stratalens index`)"
    if index.metric != metric:
        return False, f"the layer's index answers {index.metric}, not {metric}"
    return True, f"{index.index_type} index ({index.metric})"


def _check_metric(metric: str) -> str:
    metric = metric.lower()
    if metric not in METRICS:
        raise StoreError(f"distance {metric!r} is not one of {list(METRICS)}")
    return metric
