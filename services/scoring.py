"""Units of the metrics stage: score stored clusterings and embeddings, write rows.

Plain functions over a store (the pipeline runs them as Ray tasks):

- :func:`score_clusterings`: AMI, purity, ARI, NMI of every clustering of one
  clustering unit against the true subclasses;
- :func:`score_layer`: nearest-class-centre accuracy of one stored layer
  (train means, scored on the held-out split) for superclasses and subclasses;
- :func:`score_consistency`: ARI between the clusterings of two seeds for every
  pair of layers (the layer x layer matrix), per scope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from services.metrics import CLUSTERING_SCORES, adjusted_rand_score, ncc_accuracy
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


def score_clusterings(store: EmbeddingStore, clustering_unit_key: str) -> list[PendingUnit]:
    """Scores of every clustering committed under ``clustering_unit_key``."""
    rows = store.read(S.CLUSTERINGS, filter=where(unit_key=clustering_unit_key)).to_pylist()
    truth = true_subclasses(store, rows[0]["dataset_id"], rows[0]["split"])
    records = []
    for row in rows:
        labels_true = truth[np.asarray(row["sample_index"])]
        for metric, score in CLUSTERING_SCORES.items():
            record = {k: row[k] for k in _METRICS_FIELDS.names if k in row}
            records.append({**record, "metric": metric, "value": score(labels_true, row["labels"])})
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

    @property
    def unit_key(self) -> str:
        return f"ncc/{self.run_id}/epoch{self.epoch}/{self.layer}"


def score_layer(store: EmbeddingStore, unit: LayerUnit) -> list[PendingUnit]:
    """NCC accuracy (train class means, test samples) for superclasses and subclasses."""
    data = {}
    for split in ("train", "test"):
        rows = store.embeddings(
            unit.experiment_id,
            unit.arch,
            unit.layer,
            run_id=unit.run_id,
            epoch=unit.epoch,
            split=split,
        )
        data[split] = (
            embedding_matrix(rows),
            rows.column("superclass").to_numpy(),
            rows.column("subclass").to_numpy(),
        )
    (X_train, super_train, sub_train), (X_test, super_test, sub_test) = data["train"], data["test"]
    base = {
        "experiment_id": unit.experiment_id,
        "run_id": unit.run_id,
        "dataset_id": unit.dataset_id,
        "arch": unit.arch,
        "seed": unit.seed,
        "epoch": unit.epoch,
        "layer": unit.layer,
        "split": "test",
        "scope": "all",
        "method": "ncc",
        "overclustering_factor": 0,
        "n_clusters": 0,
    }
    records = [
        {
            **base,
            "metric": "ncc_superclass",
            "value": ncc_accuracy(X_train, super_train, X_test, super_test),
        },
        {
            **base,
            "metric": "ncc_subclass",
            "value": ncc_accuracy(X_train, sub_train, X_test, sub_test),
        },
    ]
    table = pa.Table.from_pylist(records, schema=_METRICS_FIELDS)
    return [store.write_fragments(S.METRICS, unit.unit_key, table)]


@dataclass(frozen=True)
class ConsistencyUnit:
    """Two runs (seeds) of one arch on one dataset, one method and factor."""

    experiment_id: str
    dataset_id: str
    arch: str
    epoch: int
    split: str
    method: str
    factor: int
    run_a: str
    seed_a: int
    run_b: str
    seed_b: int

    @property
    def unit_key(self) -> str:
        return (
            f"pairs/{self.experiment_id}/{self.dataset_id}/{self.arch}/epoch{self.epoch}/"
            f"{self.split}/{self.method}/x{self.factor}/seed{self.seed_a}-seed{self.seed_b}"
        )


def score_consistency(store: EmbeddingStore, unit: ConsistencyUnit) -> list[PendingUnit]:
    """ARI between run A's and run B's clusterings for every (layer A, layer B, scope)."""
    clusterings = {}
    for run in (unit.run_a, unit.run_b):
        rows = store.read(
            S.CLUSTERINGS,
            columns=["layer", "scope", "sample_index", "labels"],
            filter=where(
                run_id=run,
                epoch=unit.epoch,
                split=unit.split,
                method=unit.method,
                overclustering_factor=unit.factor,
            ),
        ).to_pylist()
        clusterings[run] = {(r["layer"], r["scope"]): _by_sample(r) for r in rows}
    records = []
    for (layer_a, scope), labels_a in clusterings[unit.run_a].items():
        for (layer_b, scope_b), labels_b in clusterings[unit.run_b].items():
            if scope_b != scope:
                continue
            common = np.intersect1d(labels_a[0], labels_b[0])
            value = adjusted_rand_score(
                labels_a[1][np.searchsorted(labels_a[0], common)],
                labels_b[1][np.searchsorted(labels_b[0], common)],
            )
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
                    "run_a": unit.run_a,
                    "seed_a": unit.seed_a,
                    "layer_a": layer_a,
                    "run_b": unit.run_b,
                    "seed_b": unit.seed_b,
                    "layer_b": layer_b,
                    "metric": "ari",
                    "value": value,
                }
            )
    table = pa.Table.from_pylist(records, schema=S.PAIRS_SCHEMA.remove(0))
    return [store.write_fragments(S.PAIRS, unit.unit_key, table)]


def _by_sample(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sorted sample indices, their labels) of one clustering row."""
    index, labels = np.asarray(row["sample_index"]), np.asarray(row["labels"])
    order = np.argsort(index)
    return index[order], labels[order]
