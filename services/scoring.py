"""Units of the score stage: score stored clusterings and embeddings, write rows.

Plain functions over a store (the pipeline runs them as Ray tasks):

- :func:`score_clusterings`: the spec's clustering metrics (AMI, purity, ...) of
  every clustering of one clustering unit against the true subclasses;
- :func:`score_layer`: per-layer representation measures (NCC accuracy with
  train means scored on the held-out split, CDNV, NC1, NC2) for superclass and
  subclass labels, reading each split once;
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
    clustering_scores,
    nc1,
    nc2,
    nearest_class_mean,
    pairwise_scores,
)
from storage import EmbeddingStore, PendingUnit, embedding_matrix
from storage import schema as S
from storage.filters import where

_METRICS_FIELDS = S.METRICS_SCHEMA.remove(0)


def true_subclasses(store: EmbeddingStore, dataset_id: str, split: str) -> np.ndarray:
    """Subclass of every sample of ``split``, indexed by ``sample_index``."""
    rows = store.read(
        S.SAMPLES,
        columns=["sample_index", "subclass"],
        filter=where(dataset_id=dataset_id, split=split),
    )
    truth = np.full(len(rows), -1, dtype=np.int64)
    truth[rows.column("sample_index").to_numpy()] = rows.column("subclass").to_numpy()
    return truth


def score_clusterings(
    store: EmbeddingStore,
    clustering_unit_key: str,
    metrics: tuple[str, ...] = ("ami", "purity", "ari", "nmi"),
) -> list[PendingUnit]:
    """Scores of every clustering committed under ``clustering_unit_key``."""
    rows = store.read(S.CLUSTERINGS, filter=where(unit_key=clustering_unit_key)).to_pylist()
    truth = true_subclasses(store, rows[0]["dataset_id"], rows[0]["split"])
    records = []
    for row in rows:
        labels_true = truth[np.asarray(row["sample_index"])]
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

    @property
    def unit_key(self) -> str:
        return f"layer/{self.run_id}/epoch{self.epoch}/{self.layer}"


def score_layer(store: EmbeddingStore, unit: LayerUnit) -> list[PendingUnit]:
    """Representation measures of one layer, for superclass and subclass labels.

    Class statistics come from one read of the train split; NCC then reads the
    test split once. NC1/NC2 (when asked) use the train split.
    """
    split_rows = {
        split: store.embeddings(
            unit.experiment_id,
            unit.arch,
            unit.layer,
            run_id=unit.run_id,
            epoch=unit.epoch,
            split=split,
        )
        for split in ("train", "test")
    }
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
    X_train = embedding_matrix(split_rows["train"])
    X_test = embedding_matrix(split_rows["test"])
    records = []
    for level in ("superclass", "subclass"):
        y_train = split_rows["train"].column(level).to_numpy()
        y_test = split_rows["test"].column(level).to_numpy()
        stats = ClassStatistics().update(X_train, y_train)
        values = {}
        if "ncc" in unit.metrics:
            predicted = nearest_class_mean(X_test, stats.classes, stats.means)
            values[("ncc", "test")] = float((predicted == y_test).mean())
        if "cdnv" in unit.metrics:
            values[("cdnv", "train")] = cdnv_from_statistics(stats)
        if "nc1" in unit.metrics:
            values[("nc1", "train")] = nc1(X_train, y_train)
        if "nc2" in unit.metrics:
            values[("nc2", "train")] = nc2(X_train, y_train)
        records += [
            {**base, "split": split, "metric": f"{name}_{level}", "value": value}
            for (name, split), value in values.items()
        ]
    table = pa.Table.from_pylist(records, schema=_METRICS_FIELDS)
    return [store.write_fragments(S.METRICS, unit.unit_key, table)]


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
                        }
                    )
    table = pa.Table.from_pylist(records, schema=S.PAIRS_SCHEMA.remove(0))
    return [store.write_fragments(S.PAIRS, unit.unit_key, table)]
