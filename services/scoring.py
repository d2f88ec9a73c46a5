"""Units of the score stage: score stored clusterings and embeddings, write rows.

Plain functions over a store (the pipeline runs them as Ray tasks):

- :func:`score_clusterings`: the spec's clustering metrics (AMI, purity, ...) of
  every clustering of one clustering unit against the true subclasses;
- :func:`score_layer`: per-layer representation measures (NCC accuracy with
  train means scored on the held-out split, CDNV, NC1, NC2) for superclass and
  subclass labels, streaming each split once; with ``clp``, Cluster-and-Linear-
  Probe accuracy next to a fine-label linear probe, and the class distance matrix;
- :func:`score_consistency`: scores between the clusterings of every pair of
  seeds for every pair of layers, all pairs in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from services.metrics import (
    ClassStatistics,
    cdnv_from_statistics,
    clp_scores,
    clustering_scores,
    nc1_from_statistics,
    nc2_from_means,
    nearest_class_mean,
    pairwise_scores,
)
from storage import EmbeddingStore, PendingUnit, embedding_matrix
from storage import schema as S
from storage.filters import where

_METRICS_FIELDS = S.METRICS_SCHEMA.remove(0)


class SubclassLookup:
    """The true subclass of any sample of one split, by ``sample_index``.

    Sample indices need not be 0..n-1 (an image folder's are positions in the
    whole folder, classes the hierarchy leaves out included), so lookups search
    the sorted indices. Holds two int64 columns of the split.
    """

    def __init__(self, store: EmbeddingStore, dataset_id: str, split: str):
        rows = store.read(
            S.SAMPLES,
            columns=["sample_index", "subclass"],
            filter=where(dataset_id=dataset_id, split=split),
        )
        index = rows.column("sample_index").to_numpy()
        order = np.argsort(index)
        self.index = index[order]
        self.subclass = rows.column("subclass").to_numpy().astype(np.int64)[order]
        self.where = f"{dataset_id}/{split}"

    def __call__(self, sample_index) -> np.ndarray:
        wanted = np.asarray(sample_index)
        at = np.minimum(np.searchsorted(self.index, wanted), max(0, len(self.index) - 1))
        if len(wanted) and (not len(self.index) or (self.index[at] != wanted).any()):
            raise ValueError(
                f"clustered samples are missing from the samples table of {self.where}; "
                "re-run the spec to rewrite them"
            )
        return self.subclass[at]


def score_clusterings(
    store: EmbeddingStore,
    clustering_unit_key: str,
    metrics: tuple[str, ...] = ("ami", "purity", "ari", "nmi"),
) -> list[PendingUnit]:
    """Scores of every clustering committed under ``clustering_unit_key``."""
    rows = store.read(S.CLUSTERINGS, filter=where(unit_key=clustering_unit_key)).to_pylist()
    truth = SubclassLookup(store, rows[0]["dataset_id"], rows[0]["split"])
    records = []
    for row in rows:
        labels_true = truth(row["sample_index"])
        keys = {k: row[k] for k in _METRICS_FIELDS.names if k in row}
        for metric, value in clustering_scores(labels_true, row["labels"], metrics).items():
            records.append({**keys, "metric": metric, "value": value})
    table = pa.Table.from_pylist(records, schema=_METRICS_FIELDS)
    return [store.write_fragments(S.METRICS, f"scores/{clustering_unit_key}", table)]


@dataclass(frozen=True)
class LayerUnit:
    """One stored layer of one run at one epoch."""

    experiment_id: str
    run_id: str
    dataset_id: str
    arch: str
    seed: int
    epoch: int
    layer: str
    metrics: tuple[str, ...] = ("ncc", "cdnv")
    splits: tuple[str, str] = ("train", "test")  # (class statistics from, NCC scored on)
    clp_method: str = "kmeans"  # the clustering step of CLP
    random_state: int = 0

    @property
    def unit_key(self) -> str:
        return f"layer/{self.run_id}/epoch{self.epoch}/{self.layer}"


LEVELS = ("superclass", "subclass")
LAYER_BATCH_ROWS = 8192  # rows of a layer held at once while scoring it


def _layer_batches(store: EmbeddingStore, unit: LayerUnit, split: str):
    """(X float32 (rows, d), {level: labels (rows,)}) batches of one split of the layer."""
    for batch in store.embedding_batches(
        unit.experiment_id,
        unit.arch,
        unit.layer,
        columns=[*LEVELS, S.EMBEDDING],
        rows_per_batch=LAYER_BATCH_ROWS,
        run_id=unit.run_id,
        epoch=unit.epoch,
        split=split,
    ):
        table = pa.Table.from_batches([batch])
        yield embedding_matrix(table), {level: table.column(level).to_numpy() for level in LEVELS}


def score_layer(store: EmbeddingStore, unit: LayerUnit) -> list[PendingUnit]:
    """Representation measures of one layer, for superclass and subclass labels.

    One streamed pass over the training split gathers the class statistics
    (CDNV, NC1, NC2, the class distance matrix and the class means come from
    them); NCC then scores the held-out split in a second pass. At most
    ``LAYER_BATCH_ROWS`` rows are held, except with ``clp``: its clustering and
    linear probes need both splits of the layer at once, (n_train + n_heldout)
    x dim float32 (e.g. 123 MB for CIFAR-10 at ResNet-18's 512-d penultimate
    layer, 750 MB for BREEDS living-17 at ResNet-50's 2048-d one).
    """
    train_split, heldout_split = unit.splits
    clp = "clp" in unit.metrics
    kept: dict[str, list] = {train_split: [], heldout_split: []}  # batches CLP needs
    stats = {level: ClassStatistics(track_scatter="nc1" in unit.metrics) for level in LEVELS}
    for X, labels in _layer_batches(store, unit, train_split):
        for level in LEVELS:
            stats[level].update(X, labels[level])
        if clp:
            kept[train_split].append((X, labels))
    values: dict[tuple[str, str, str], float] = {}  # (metric, level, split) -> value
    if "ncc" in unit.metrics or clp:
        correct, seen = dict.fromkeys(LEVELS, 0), 0
        # classes and means are derived from the statistics: compute them once, not per batch
        centres = {level: (stats[level].classes, stats[level].means) for level in LEVELS}
        for X, labels in _layer_batches(store, unit, heldout_split):
            seen += len(X)
            for level in LEVELS:
                predicted = nearest_class_mean(X, *centres[level])
                correct[level] += int((predicted == labels[level]).sum())
            if clp:
                kept[heldout_split].append((X, labels))
        if "ncc" in unit.metrics:
            for level in LEVELS:
                values[("ncc", level, heldout_split)] = correct[level] / max(1, seen)
    for level in LEVELS:
        if "cdnv" in unit.metrics:
            values[("cdnv", level, train_split)] = cdnv_from_statistics(stats[level])
        if "nc1" in unit.metrics:
            values[("nc1", level, train_split)] = nc1_from_statistics(stats[level])
        if "nc2" in unit.metrics:
            values[("nc2", level, train_split)] = nc2_from_means(stats[level].means)
    base = {
        "experiment_id": unit.experiment_id,
        "run_id": unit.run_id,
        "dataset_id": unit.dataset_id,
        "arch": unit.arch,
        "seed": unit.seed,
        "epoch": unit.epoch,
        "layer": unit.layer,
        "scope": "all",
        "method": "representation",
        "overclustering_factor": 0,
        "n_clusters": 0,
    }
    records = [
        {**base, "split": split, "metric": f"{name}_{level}", "value": value}
        for (name, level, split), value in values.items()
    ]
    if clp:
        records += _clp_records(base, unit, stats["subclass"], kept)
    table = pa.Table.from_pylist(records, schema=_METRICS_FIELDS)
    return [store.write_fragments(S.METRICS, unit.unit_key, table)]


def _clp_records(
    base: dict, unit: LayerUnit, subclass_stats: ClassStatistics, kept: dict[str, list]
) -> list[dict]:
    """CLP rows of one layer: ``clp_accuracy`` and ``linear_probe_fine`` on the held-out
    split, and ``class_distance`` (scope ``"i,j"``: subclass ids) on the training split.

    The class distance matrix D[i, j] = mean squared distance between the
    training samples of subclasses i and j (Yang et al.'s eq. 6) comes from the
    streamed class statistics.
    """
    train_split, heldout_split = unit.splits
    splits = {}
    for split in (train_split, heldout_split):
        batches = kept[split]
        if not batches:
            raise ValueError(
                f"layer {unit.layer} of run {unit.run_id} has no {split!r} embeddings, which "
                "clp needs; extract both splits or drop clp from metrics.representation"
            )
        X = np.concatenate([X for X, _ in batches])
        splits[split] = (
            X,
            *(np.concatenate([lab[level] for _, lab in batches]) for level in LEVELS),
        )
    scores = clp_scores(
        *splits[train_split],
        *splits[heldout_split],
        method=unit.clp_method,
        random_state=unit.random_state,
    )
    n_fine = len(np.unique(splits[train_split][2]))
    records = [
        {**base, "split": heldout_split, "metric": metric, "value": value, "n_clusters": n_fine}
        for metric, value in scores.items()
    ]
    classes = subclass_stats.classes
    means, sq = subclass_stats.means, subclass_stats.mean_sq_norms
    distances = sq[:, None] + sq[None, :] - 2 * means @ means.T
    for i, a in enumerate(classes):
        for j, b in enumerate(classes):
            records.append(
                {
                    **base,
                    "split": train_split,
                    "scope": f"{a},{b}",
                    "metric": "class_distance",
                    "value": float(distances[i, j]),
                }
            )
    return records


@dataclass(frozen=True)
class ConsistencyUnit:
    """Every seed of one arch on one dataset, for one method and overclustering factor."""

    experiment_id: str
    dataset_id: str
    arch: str
    epoch: int
    split: str
    method: str
    factor: int
    runs: tuple[tuple[str, int], ...]  # (run_id, seed)
    metrics: tuple[str, ...] = ("ari",)

    @property
    def unit_key(self) -> str:
        return (
            f"pairs/{self.experiment_id}/{self.dataset_id}/{self.arch}/epoch{self.epoch}/"
            f"{self.split}/{self.method}/x{self.factor}"
        )


def score_consistency(store: EmbeddingStore, unit: ConsistencyUnit) -> list[PendingUnit]:
    """Scores between the clusterings of seeds A < B for every (layer A, layer B, scope)."""
    rows = store.read(
        S.CLUSTERINGS,
        columns=["run_id", "seed", "layer", "scope", "sample_index", "labels"],
        filter=where(
            run_id=[run for run, _ in unit.runs],
            epoch=unit.epoch,
            split=unit.split,
            method=unit.method,
            overclustering_factor=unit.factor,
        ),
    ).to_pylist()
    by_scope: dict[str, list[dict]] = {}
    for row in rows:
        by_scope.setdefault(row["scope"], []).append(row)
    records = []
    for scope, members in sorted(by_scope.items()):
        members.sort(key=lambda r: (r["seed"], r["layer"]))
        order = np.argsort(members[0]["sample_index"])
        reference = np.asarray(members[0]["sample_index"])[order]
        labelings = []
        for row in members:
            index = np.asarray(row["sample_index"])
            if not np.array_equal(np.sort(index), reference):
                raise ValueError(
                    f"clusterings of scope {scope!r} cover different samples; "
                    "re-run the cluster stage"
                )
            labelings.append(np.asarray(row["labels"])[np.argsort(index)])
        scores = pairwise_scores(labelings, unit.metrics)
        for i, a in enumerate(members):
            for j, b in enumerate(members):
                if a["seed"] >= b["seed"]:
                    continue
                for metric in unit.metrics:
                    records.append(
                        {
                            "experiment_id": unit.experiment_id,
                            "dataset_id": unit.dataset_id,
                            "arch": unit.arch,
                            "epoch": unit.epoch,
                            "split": unit.split,
                            "scope": scope,
                            "method": unit.method,
                            "overclustering_factor": unit.factor,
                            "run_a": a["run_id"],
                            "seed_a": a["seed"],
                            "layer_a": a["layer"],
                            "run_b": b["run_id"],
                            "seed_b": b["seed"],
                            "layer_b": b["layer"],
                            "metric": metric,
                            "value": float(scores[metric][i, j]),
                            "experiment_b": unit.experiment_id,
                            "arch_b": unit.arch,
                            "epoch_b": unit.epoch,
                        }
                    )
    table = pa.Table.from_pylist(records, schema=S.PAIRS_SCHEMA.remove(0))
    return [store.write_fragments(S.PAIRS, unit.unit_key, table)]
