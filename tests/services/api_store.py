"""A small store written by hand for the query-service tests: every value is known.

Experiment ``exp``: arch ``small_cnn``; dataset ``ds-a`` with seeds 0 and 1 and
dataset ``ds-b`` with seed 0; layers ``conv1`` (dimension 4) and ``fc2``
(dimension 8), probe epochs 1 and 2, splits ``test`` and ``train``. The samples of
``ds-a``'s test split have thumbnails, its train split has none. Experiment
``other`` has one run and no layers.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from PIL import Image

from storage import EmbeddingStore, embeddings_table
from storage import schema as S

EXPERIMENT = "exp"
ARCH = "small_cnn"
DIMS = {"conv1": 4, "fc2": 8}
RUNS = (("ds-a", 0), ("ds-a", 1), ("ds-b", 0))
EPOCHS = (1, 2)
SPLITS = {"test": 12, "train": 6}  # rows per (run, epoch)
SCOPES = ("superclass=0", "superclass=1")


def run_id(dataset: str, seed: int, experiment: str = EXPERIMENT) -> str:
    return f"{experiment}/{dataset}/{ARCH}/seed{seed}"


def vectors(dataset: str, seed: int, epoch: int, split: str, layer: str) -> np.ndarray:
    """The stored embeddings of one (run, epoch, split) of a layer: (rows, dim) float32."""
    index = (RUNS.index((dataset, seed)), EPOCHS.index(epoch), list(SPLITS).index(split))
    rng = np.random.default_rng([*index, DIMS[layer]])
    return rng.normal(size=(SPLITS[split], DIMS[layer])).astype(np.float32)


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def metric_value(seed: int, epoch: int, layer: str, scope: str) -> float:
    return 0.1 * seed + 0.01 * epoch + 0.3 * list(DIMS).index(layer) + SCOPES.index(scope) / 100


def pair_value(epoch: int, layer_a: str, layer_b: str, scope: str) -> float:
    layers = list(DIMS)
    return (
        0.5
        + 0.1 * layers.index(layer_a)
        + 0.01 * layers.index(layer_b)
        + (0.002 if scope == SCOPES[1] else 0.0)
        + 0.1 * epoch
    )


def build(root: str) -> EmbeddingStore:
    """Write the store under ``root`` and return it."""
    store = EmbeddingStore(root)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    _write(
        store,
        S.EXPERIMENTS,
        [
            {
                "experiment_id": name,
                "name": name,
                "spec": json.dumps({"name": name}),
                "created_at": now,
            }
            for name in (EXPERIMENT, "other")
        ],
    )
    runs = [
        {
            "run_id": run_id(dataset, seed),
            "experiment_id": EXPERIMENT,
            "arch": ARCH,
            "loss": "softmax_ce",
            "dataset_id": dataset,
            "dataset": dataset.split("-")[0],
            "hierarchy": dataset.split("-")[1],
            "seed": seed,
            "epochs": 2,
            "status": "finished",
            "train_accuracy": 0.9 + seed / 100,
            "test_accuracy": float("nan") if dataset == "ds-b" else 0.8 + seed / 100,
            "train_seconds": 1.5,
            "created_at": now,
        }
        for dataset, seed in RUNS
    ]
    runs.append(runs[0] | {"run_id": run_id("ds-a", 0, "other"), "experiment_id": "other"})
    _write(store, S.RUNS, runs)
    samples = [
        {
            "dataset_id": dataset,
            "dataset": dataset.split("-")[0],
            "hierarchy": dataset.split("-")[1],
            "split": split,
            "sample_index": i,
            "subclass": i % 4,
            "superclass": i % 2,
            "subclass_name": f"sub{i % 4}",
            "superclass_name": f"super{i % 2}",
            "path": None,
            "thumbnail": png(10 * i) if split == "test" else None,
        }
        for dataset in ("ds-a", "ds-b")
        for split, n in SPLITS.items()
        for i in range(n)
    ]
    _write(store, S.SAMPLES, samples)
    for layer, dim in DIMS.items():
        table = embeddings_table(EXPERIMENT, ARCH, layer)
        for dataset, seed in RUNS:
            for epoch in EPOCHS:
                for split, n in SPLITS.items():
                    rows = S.embedding_rows(
                        vectors(dataset, seed, epoch, split, layer),
                        sample_index=np.arange(n),
                        subclass=np.arange(n) % 4,
                        superclass=np.arange(n) % 2,
                        experiment_id=EXPERIMENT,
                        run_id=run_id(dataset, seed),
                        dataset_id=dataset,
                        arch=ARCH,
                        seed=seed,
                        epoch=epoch,
                        split=split,
                    )
                    key = f"{run_id(dataset, seed)}/{epoch}/{split}"
                    store.write_unit(table, key, rows, S.embeddings_schema(dim))
    keys = {"experiment_id": EXPERIMENT, "arch": ARCH, "split": "test", "method": "ward"}
    metrics, clusterings, pairs = [], [], []
    for dataset, seed in RUNS:
        for epoch in EPOCHS:
            for layer in DIMS:
                for scope in SCOPES:
                    base = keys | {
                        "run_id": run_id(dataset, seed),
                        "dataset_id": dataset,
                        "seed": seed,
                        "epoch": epoch,
                        "layer": layer,
                        "scope": scope,
                        "overclustering_factor": 1,
                        "n_clusters": 2,
                    }
                    metrics.append(
                        base | {"metric": "ami", "value": metric_value(seed, epoch, layer, scope)}
                    )
                    members = [i for i in range(SPLITS["test"]) if f"superclass={i % 2}" == scope]
                    clusterings.append(
                        base | {"sample_index": members, "labels": [i % 3 // 2 for i in members]}
                    )
    metrics[0] = metrics[0] | {"metric": "nmi", "value": float("nan")}  # JSON has no NaN
    for epoch in EPOCHS:
        for layer_a in DIMS:
            for layer_b in DIMS:
                for scope in SCOPES:
                    pairs.append(
                        {
                            "experiment_id": EXPERIMENT,
                            "dataset_id": "ds-a",
                            "arch": ARCH,
                            "epoch": epoch,
                            "split": "test",
                            "scope": scope,
                            "method": "ward",
                            "overclustering_factor": 1,
                            "run_a": run_id("ds-a", 0),
                            "seed_a": 0,
                            "layer_a": layer_a,
                            "run_b": run_id("ds-a", 1),
                            "seed_b": 1,
                            "layer_b": layer_b,
                            "metric": "ari",
                            "value": pair_value(epoch, layer_a, layer_b, scope),
                        }
                    )
    _write(store, S.METRICS, metrics)
    _write(store, S.CLUSTERINGS, clusterings)
    _write(store, S.PAIRS, pairs)
    for table in store.list_tables():
        store.optimize(table)
    return store


def _write(store: EmbeddingStore, table: str, records: list[dict]) -> None:
    schema = S.FIXED_SCHEMAS[table].remove(0)  # all but unit_key
    store.write_unit(table, table, pa.Table.from_pylist(records, schema=schema))
