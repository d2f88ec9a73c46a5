"""Capacity plans: what a spec will run, store and need, computed before anything runs.

A plan counts the units of work of every stage, the rows and bytes each table
will gain, and the peak memory of the largest clustering task per method, from
the spec, the datasets' indexes (labels, never images) and one dummy forward
pass of each model on the CPU. No Ray is started and nothing is trained.

Bytes are those of the data files a compacted store keeps (``stratalens
compact``): Lance v2 stores fixed-width columns and vectors as they are and
dictionary-encodes the repeated key strings to about a byte per value. Scalar
indices and old versions come on top (see README, "Capacity plans").

Datasets whose images are not on this machine (BREEDS, full ImageNet) are
planned from known split sizes (``assume_counts``): the samples are spread
evenly over the subclasses of the hierarchy, which is read without images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from actors import models
from actors.clustering import select_backend
from actors.clustering.distances import condensed_bytes
from actors.clustering.estimators import CONDENSED_MEMORY_FRACTION
from actors.clustering.memory import available_memory_bytes
from actors.datasets import (
    DatasetConfig,
    HierarchicalDataset,
    build_dataset,
    build_hierarchy,
)
from jobs.spec import datasets_loaded_by
from storage import schema as S

GIB = 1 << 30
# Lance v2 dictionary-encodes a key string column with few distinct values to about this
# many bytes per row (1.1-1.7 measured on the tables of a reduced run).
STRING_BYTES_PER_VALUE = 1.2
# One distinct unit key (and the dictionary entries that come with it), per unit of work.
UNIT_KEY_BYTES = 80
# Footer, column metadata and page headers of one table's data file.
TABLE_FILE_BYTES = 2048
# PNG thumbnails whose images are not on this machine: a 64-px (short side) RGB photo.
ASSUMED_THUMBNAIL_BYTES = 11 * 1024
THUMBNAIL_PROBES = 16  # thumbnails encoded to estimate a dataset's mean PNG size
# A clustering task holds the split's stored vectors, their float32 matrix and the
# L2-normalised copy of it while it fits one group.
CLUSTER_READ_COPIES = 3
KMEANS_COPIES = 2  # scikit-learn's float32 working copy of X next to the input
DEFAULT_IMAGE_SIZE = 224  # folder datasets (ImageNet) whose images are not on this machine
CIFAR_IMAGE_SIZE = 32
EMBEDDING_PAIR_METRICS = ("cka", "cka_debiased", "mknn")  # jobs.compare.EMBEDDING_METRICS
FIXED_WIDTH_BYTES = {"int32": 4, "int64": 8, "double": 8, "timestamp[us, tz=UTC]": 8}


class PlanError(ValueError):
    """The spec cannot run within its resources; the message names the fix."""


@dataclass(frozen=True)
class TablePlan:
    """Rows and data-file bytes one table (or group of per-layer tables) will gain."""

    table: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class ClusterPeak:
    """The largest clustering task of one method: its group size and its peak memory."""

    method: str
    backend: str
    algorithm: str  # in-place condensed | vector (fastcluster) | k-means | rnn (torch)
    n_samples: int  # the largest group clustered at once
    split_samples: int  # the rows the task reads (the whole split of one layer)
    dim: int
    peak_bytes: int
    fits: bool


@dataclass
class CapacityPlan:
    """What a spec will run, store and need (see :func:`plan_experiment`)."""

    experiment_id: str
    units: dict[str, int]
    tables: list[TablePlan]
    clustering: list[ClusterPeak]
    worker_memory_bytes: int
    memory_source: str  # where the budget came from
    assumed: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    def to_json(self) -> dict:
        """A JSON-ready dict (``stratalens plan --json``)."""
        out = asdict(self)
        out["total_bytes"] = self.total_bytes
        return out

    def check_memory(self) -> None:
        """Raise :class:`PlanError` when the largest fit of a method cannot fit the budget."""
        for peak in self.clustering:
            if not peak.fits:
                raise PlanError(
                    f"the largest {peak.method} fit ({peak.n_samples:,} samples x {peak.dim} "
                    f"dims, {peak.algorithm}) needs {peak.peak_bytes / GIB:.2f} GiB, more than "
                    f"the {self.worker_memory_bytes / GIB:.2f} GiB worker budget "
                    f"({self.memory_source}); raise resources.worker_memory_gb, cluster with "
                    "scope: superclass, or drop the method"
                )


# -- datasets -----------------------------------------------------------------
def parse_counts(text: str) -> dict[str, int]:
    """``"train=88400,val=3400"`` -> ``{"train": 88400, "val": 3400}`` (training split first)."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        split, _, value = part.partition("=")
        if not value.strip().isdigit() or int(value) < 1 or not split.strip():
            raise PlanError(
                f"--assume-counts item {part!r} should be SPLIT=N with N >= 1, "
                "e.g. train=88400,val=3400"
            )
        counts[split.strip()] = int(value)
    if len(counts) != 2:
        raise PlanError(
            f"--assume-counts {text!r} should name two splits (training first), "
            "e.g. train=88400,val=3400"
        )
    return counts


class AssumedDataset(HierarchicalDataset):
    """Labels of a dataset whose images are elsewhere: only its hierarchy is read."""

    def input_shape(self) -> tuple[int, int, int]:
        default = CIFAR_IMAGE_SIZE if self.config.name.startswith("cifar") else DEFAULT_IMAGE_SIZE
        size = int(self.config.options.get("image_size", default))
        return (self.in_channels, size, size)


def assumed_dataset(config: DatasetConfig, counts: dict[str, int]) -> AssumedDataset:
    """A dataset with ``counts`` samples per split spread evenly over the hierarchy's subclasses.

    Only the hierarchy is read (no image); ``counts`` lists the training split first.
    """
    hierarchy = build_hierarchy(config)
    subclass = {
        split: np.arange(n, dtype=np.int64) * hierarchy.n_subclasses // n
        for split, n in counts.items()
    }
    splits = tuple(counts)
    return AssumedDataset(config, hierarchy, subclass, splits=splits, in_channels=3)


@contextlib.contextmanager
def assumed_counts(counts: dict[str, int] | None) -> Iterator[None]:
    """Within the block, specs load every dataset as :func:`assumed_dataset` with ``counts``.

    Lets a spec whose images are elsewhere (a cluster's volume) be validated and planned.
    """
    if counts is None:
        yield
        return
    with datasets_loaded_by(lambda d: assumed_dataset(d.config(), counts)):
        yield


def layer_dims(arch, data: HierarchicalDataset) -> dict[str, int]:
    """{layer: stored dimension} of ``arch`` (a :class:`jobs.spec.ArchSpec`) on ``data``.

    The model runs on the meta device: nothing is allocated or computed.
    """
    return models.layer_dims(arch.config(), data.input_shape(), data.hierarchy.n_superclasses)


def _thumbnail_bytes(data: HierarchicalDataset) -> tuple[float, bool]:
    """(mean PNG bytes of a thumbnail, whether it was assumed rather than measured)."""
    if isinstance(data, AssumedDataset):
        return float(ASSUMED_THUMBNAIL_BYTES), True
    split = data.thumbnail_splits()[0]
    thumbs = data.thumbnail_dataset(split)
    n = data.num_samples(split)
    probes = np.unique(np.linspace(0, n - 1, min(n, THUMBNAIL_PROBES)).astype(int))
    return float(np.mean([len(thumbs[int(i)]) for i in probes])), False


# -- tables --------------------------------------------------------------------
def _row_bytes(schema, skip=()) -> tuple[int, int]:
    """(fixed-width bytes, number of string columns) of one row of ``schema``."""
    fixed = strings = 0
    for f in schema:
        if f.name in skip:
            continue
        if str(f.type) == "string":
            strings += 1
        else:
            fixed += FIXED_WIDTH_BYTES.get(str(f.type), 0)
    return fixed, strings


def _table(name: str, schema, rows: int, units: int, payload: float = 0.0, skip=()) -> TablePlan:
    fixed, strings = _row_bytes(schema, skip)
    size = rows * (fixed + strings * STRING_BYTES_PER_VALUE) + payload + units * UNIT_KEY_BYTES
    return TablePlan(name, rows, int(round(size + TABLE_FILE_BYTES)) if rows else 0)


def _groups(data: HierarchicalDataset, split: str, scope: str) -> list[tuple[int, int]]:
    """(samples, subclasses) of each group one clustering fits for ``split``."""
    per_super = data.hierarchy.subclasses_per_superclass()
    superclass = data.superclass(split)
    if scope == "all":
        return [(len(superclass), int(per_super.sum()))]
    sizes = np.bincount(superclass, minlength=len(per_super))
    return [(int(sizes[s]), int(per_super[s])) for s in np.unique(superclass)]


def plan_experiment(
    spec,
    *,
    worker_memory_gb: float | None = None,
    assume_counts: dict[str, int] | None = None,
) -> CapacityPlan:
    """The capacity plan of ``spec`` (an :class:`jobs.spec.ExperimentSpec`).

    Parameters
    ----------
    worker_memory_gb : float, optional
        Memory of one clustering worker; default ``spec.resources.worker_memory_gb``, else
        what this machine has available now.
    assume_counts : dict of str to int, optional
        Samples per split (training split first) for every dataset, whose images are then
        not needed: the hierarchy gives the subclasses and the samples are spread evenly.
    """
    budget_gb = worker_memory_gb or getattr(spec.resources, "worker_memory_gb", None)
    if budget_gb:
        budget, source = int(budget_gb * GIB), "worker_memory_gb"
    else:
        budget = available_memory_bytes() or 8 * GIB
        source = "available on this machine"
    c, epochs = spec.clustering, len(spec.epochs_to_probe)
    seeds, factors = len(spec.seeds), len(c.overclustering_factors)
    units = dict.fromkeys(("samples", "train", "extract", "cluster", "score"), 0)
    rows = dict.fromkeys(S.FIXED_SCHEMAS, 0)
    payload = dict.fromkeys(S.FIXED_SCHEMAS, 0.0)
    unit_counts = dict.fromkeys(S.FIXED_SCHEMAS, 0)
    embeddings: dict[str, list[float]] = {}  # table -> [rows, payload bytes, units]
    peaks: dict[str, ClusterPeak] = {}
    assumed: dict[str, dict[str, int]] = {}
    rows[S.EXPERIMENTS], unit_counts[S.EXPERIMENTS] = 1, 1
    payload[S.EXPERIMENTS] = len(spec.canonical_json())
    dtype_bytes = 2 if spec.storage.embedding_dtype == "float16" else 4
    for dataset_spec in spec.datasets:
        config = dataset_spec.config()
        if assume_counts is not None:
            data = assumed_dataset(config, assume_counts)
            assumed[config.dataset_id] = dict(assume_counts)
        else:
            data = build_dataset(config)
        split_sizes = {s: data.num_samples(s) for s in data.splits}
        units["samples"] += len(data.splits)
        unit_counts[S.SAMPLES] += len(data.splits)
        rows[S.SAMPLES] += sum(split_sizes.values())
        thumb_splits = data.thumbnail_splits()
        if thumb_splits:
            thumb, _ = _thumbnail_bytes(data)
            payload[S.SAMPLES] += thumb * sum(split_sizes[s] for s in thumb_splits)
        split = data.resolve_split(c.split)
        groups = _groups(data, split, c.scope)
        members = sum(n for n, _ in groups)
        for arch_spec in spec.arch_specs:
            arch = arch_spec.stored_key
            dims = layer_dims(arch_spec, data)
            n_runs = seeds
            units["train"] += n_runs
            unit_counts[S.RUNS] += n_runs
            rows[S.RUNS] += n_runs
            units["extract"] += n_runs * epochs * len(dims) * len(data.splits)
            for layer, d in dims.items():
                entry = embeddings.setdefault(S.embeddings_table(spec.name, arch, layer), [0, 0, 0])
                entry[0] += n_runs * epochs * sum(split_sizes.values())
                entry[1] += n_runs * epochs * sum(split_sizes.values()) * d * dtype_bytes
                entry[2] += n_runs * epochs * len(data.splits)
            cluster_units = n_runs * epochs * len(dims) * len(c.methods)
            units["cluster"] += cluster_units
            unit_counts[S.CLUSTERINGS] += cluster_units
            rows[S.CLUSTERINGS] += cluster_units * len(groups) * factors
            # sample_index int64 + label int32 per member, and their two list offsets
            payload[S.CLUSTERINGS] += cluster_units * factors * (members * 12 + len(groups) * 8)
            layer_units = n_runs * epochs * len(dims) if spec.metrics.representation else 0
            rows[S.METRICS] += cluster_units * len(groups) * factors * len(spec.metrics.clustering)
            rows[S.METRICS] += layer_units * 2 * len(spec.metrics.representation)
            unit_counts[S.METRICS] += cluster_units + layer_units
            pair_units = 0
            similarity = [m for m in spec.metrics.consistency if m in EMBEDDING_PAIR_METRICS]
            clustering = len(spec.metrics.consistency) - len(similarity)
            if seeds >= 2 and clustering:
                pair_units = epochs * len(c.methods) * factors
                rows[S.PAIRS] += (
                    pair_units * len(groups) * math.comb(seeds, 2) * len(dims) ** 2 * clustering
                )
                unit_counts[S.PAIRS] += pair_units
            if seeds >= 2 and similarity:  # jobs/similarity_stage.py: one unit per epoch
                pair_units += epochs
                rows[S.PAIRS] += epochs * math.comb(seeds, 2) * len(dims) ** 2 * len(similarity)
                unit_counts[S.PAIRS] += epochs
            units["score"] += cluster_units + layer_units + pair_units
            for method in c.methods:
                peak = _cluster_peak(
                    method,
                    c.backend,
                    max(n for n, _ in groups),
                    members,
                    max(dims.values()),
                    budget,
                )
                if method not in peaks or peak.peak_bytes > peaks[method].peak_bytes:
                    peaks[method] = peak
    tables = [
        _table(S.EXPERIMENTS, S.EXPERIMENTS_SCHEMA, 1, 1, payload[S.EXPERIMENTS], skip={"spec"}),
        _table(S.RUNS, S.RUNS_SCHEMA, rows[S.RUNS], unit_counts[S.RUNS]),
        _table(
            S.SAMPLES,
            S.SAMPLES_SCHEMA,
            rows[S.SAMPLES],
            unit_counts[S.SAMPLES],
            payload[S.SAMPLES] + rows[S.SAMPLES] * 4,
        ),  # thumbnail offsets
        _table(
            S.CLUSTERINGS,
            S.CLUSTERINGS_SCHEMA,
            rows[S.CLUSTERINGS],
            unit_counts[S.CLUSTERINGS],
            payload[S.CLUSTERINGS],
        ),
        _table(S.METRICS, S.METRICS_SCHEMA, rows[S.METRICS], unit_counts[S.METRICS]),
        _table(S.PAIRS, S.PAIRS_SCHEMA, rows[S.PAIRS], unit_counts[S.PAIRS]),
    ]
    for name, (n, vector_bytes, n_units) in sorted(embeddings.items()):
        tables.append(
            _table(
                name, S.embeddings_schema(1), int(n), int(n_units), vector_bytes, skip={S.EMBEDDING}
            )
        )
    return CapacityPlan(
        experiment_id=spec.experiment_id,
        units=units,
        tables=tables,
        clustering=sorted(peaks.values(), key=lambda p: p.method),
        worker_memory_bytes=budget,
        memory_source=source,
        assumed=assumed,
    )


def _cluster_peak(
    method: str, backend: str, n: int, split_n: int, d: int, budget: int
) -> ClusterPeak:
    """Peak memory of one clustering task: the split's vectors read, plus the largest fit."""
    chosen = select_backend(backend, method=method)
    read = CLUSTER_READ_COPIES * split_n * d * 4
    if method == "kmeans":
        algorithm, fit = "k-means", KMEANS_COPIES * n * d * 4
    elif chosen == "torch":
        algorithm, fit = "rnn (torch)", 2 * n * d * 4  # centroids and sizes, O(n d)
    elif chosen == "cuml":
        algorithm, fit = "cuml", 2 * n * d * 4
    elif condensed_bytes(n) <= budget * CONDENSED_MEMORY_FRACTION:
        algorithm, fit = "in-place condensed", condensed_bytes(n)
    elif method in ("ward", "single"):
        # fastcluster's vector method: a float64 copy of X and the (n - 1, 4) merge matrix
        algorithm, fit = "vector (fastcluster)", n * d * 8 + (n - 1) * 32
    else:
        algorithm, fit = "in-place condensed", condensed_bytes(n)
    linkage = (n - 1) * 32 if method != "kmeans" else 0
    peak = read + fit + (linkage if algorithm == "in-place condensed" else 0)
    fits = peak <= budget and not (
        algorithm == "in-place condensed"
        and condensed_bytes(n) > budget * CONDENSED_MEMORY_FRACTION
    )
    return ClusterPeak(method, chosen, algorithm, n, split_n, d, int(peak), fits)


def check_capacity(spec) -> CapacityPlan:
    """Plan ``spec`` and raise :class:`PlanError` if its largest fit exceeds the budget."""
    plan = plan_experiment(spec)
    plan.check_memory()
    return plan


def stored_bytes(root: str, table: str) -> int:
    """Bytes of the data files the current version of a local ``table`` references.

    What :func:`plan_experiment` predicts: the rows as a compacted store keeps them
    (scalar indices, manifests and superseded versions not counted).
    """
    import os

    import lance

    ds = lance.dataset(f"{root}/{table}")
    return sum(
        os.path.getsize(f"{root}/{table}/data/{data_file.path}")
        for fragment in ds.get_fragments()
        for data_file in fragment.data_files()
    )


# -- compares (`stratalens compare --plan`) ----------------------------------------
@dataclass(frozen=True)
class ComparePlan:
    """What a ``stratalens compare`` will compute, store and read (see :func:`plan_compare`)."""

    sides: int  # (run, probe epoch) selected
    units: int  # (side A, side B, metric) units, one per pair of sides and metric
    pending: int  # units not yet committed
    rows: int  # pairs rows the pending units add
    pairs_bytes: int  # data-file bytes those rows add (as a compacted store keeps them)
    read_bytes: int  # bytes the pending units read: clusterings, embeddings (+ sample_index)
    cka_memory_bytes: int  # float64 moments the largest CKA accumulator holds

    def to_json(self) -> dict:
        return asdict(self)


def plan_compare(
    store,
    experiments: list[str],
    *,
    archs: list[str] | None = None,
    epochs: list[int] | None = None,
    metrics: tuple[str, ...] = ("ari", "cka"),
    k: int = 10,
) -> ComparePlan:
    """Count the pairs, rows and bytes of a compare from the store's metadata alone.

    Refuses what :func:`jobs.compare.run_compare` refuses (unknown experiment, arch or
    metric, sides over different data) with the same :class:`jobs.compare.CompareError`.
    Clustering scores read both sides' clusterings once per pair of sides; CKA reads
    every (side, layer) table once; mknn once more per (side, layer), or ``blocks + 1``
    times when the layer exceeds ``KNN_QUERY_BYTES``.
    """
    from jobs.compare import CLUSTERING_METRICS, compare_units, list_sides
    from services.metrics.similarity import KNN_QUERY_BYTES
    from storage.filters import where

    sides = list_sides(store, experiments, archs=archs, epochs=epochs)
    units = compare_units(sides, metrics)
    done = store.committed_keys(S.PAIRS)
    pending = [u for u in units if u.unit_key not in done]
    needed = sorted({u.a for u in pending} | {u.b for u in pending})
    clusterings, layers = {}, {}
    for side in needed:
        rows = store.read(
            S.CLUSTERINGS,
            columns=["layer", "scope", "method", "overclustering_factor"],
            filter=where(run_id=side.run_id, epoch=side.epoch, split=side.split),
        ).to_pylist()
        keys: dict[tuple, set[str]] = {}
        for row in rows:
            key = (row["scope"], row["method"], row["overclustering_factor"])
            keys.setdefault(key, set()).add(row["layer"])
        clusterings[side] = keys
        n = store.read(
            S.SAMPLES,
            columns=["sample_index"],
            filter=where(dataset_id=side.dataset_id, split=side.split),
        ).num_rows
        layers[side] = (n, _stored_layer_shapes(store, side))
    n_rows = read = 0
    embedding_sides: set = set()
    knn_sides: set = set()
    cka_pairs: dict[tuple[str, str], set] = {}
    for u in pending:
        if u.metric in CLUSTERING_METRICS:
            a, b = clusterings[u.a], clusterings[u.b]
            n_rows += sum(len(a[key]) * len(b[key]) for key in set(a) & set(b))
            for side, keys in ((u.a, a), (u.b, b)):  # scopes partition the split
                clustered = {(m, f, layer) for (_, m, f), names in keys.items() for layer in names}
                read += len(clustered) * layers[side][0] * 12  # sample_index + label
        else:
            n_rows += len(layers[u.a][1]) * len(layers[u.b][1])
            embedding_sides |= {u.a, u.b}
            if u.metric == "mknn":
                knn_sides |= {u.a, u.b}
            else:
                group = cka_pairs.setdefault((u.a.dataset_id, u.a.split), set())
                group.add((u.a, u.b))
    for side in embedding_sides:  # the sample_index check of every (side, layer)
        samples, shapes = layers[side]
        read += len(shapes) * samples * 8
    cka_sides = {s for pairs in cka_pairs.values() for pair in pairs for s in pair}
    for side in cka_sides:
        samples, shapes = layers[side]
        read += sum(samples * d * width for d, width in shapes.values())
    for side in knn_sides:
        samples, shapes = layers[side]
        for d, width in shapes.values():
            blocks = math.ceil(samples * d * 8 / KNN_QUERY_BYTES)
            read += (1 if blocks <= 1 else blocks + 1) * samples * d * width
    memory = 0
    for pairs in cka_pairs.values():
        members = {s for pair in pairs for s in pair}
        width = {s: sum(d for d, _ in layers[s][1].values()) for s in members}
        moments = sum(sum(d * d for d, _ in layers[s][1].values()) for s in members)
        memory = max(memory, 8 * (moments + sum(width[a] * width[b] for a, b in pairs)))
    pairs_table = _table(S.PAIRS, S.PAIRS_SCHEMA, n_rows, len(pending))
    return ComparePlan(
        sides=len(sides),
        units=len(units),
        pending=len(pending),
        rows=n_rows,
        pairs_bytes=pairs_table.bytes - (TABLE_FILE_BYTES if n_rows else 0),
        read_bytes=int(read),
        cka_memory_bytes=int(memory),
    )


def _stored_layer_shapes(store, side) -> dict[str, tuple[int, int]]:
    """layer -> (dims, bytes per value) of a side's stored embedding tables."""
    prefix = f"{S.EMBEDDINGS_PREFIX}/{side.experiment_id}/{side.arch}/"
    shapes = {}
    for table in store.list_tables():
        if table.startswith(prefix):
            vector = store.dataset(table).schema.field(S.EMBEDDING).type
            width = 2 if pa.types.is_float16(vector.value_type) else 4
            shapes[table[len(prefix) :]] = (vector.list_size, width)
    return shapes


__all__ = [
    "CapacityPlan",
    "ComparePlan",
    "ClusterPeak",
    "PlanError",
    "TablePlan",
    "assumed_counts",
    "check_capacity",
    "parse_counts",
    "plan_compare",
    "plan_experiment",
    "stored_bytes",
]
