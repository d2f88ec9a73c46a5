"""Units of work that run inside Ray workers and return uncommitted store writes.

Each unit has a key; the pipeline commits what a unit returns in one
transaction, and skips units whose keys are already committed. The functions
here are plain Python (a notebook can call them); ``TrainerActor`` and
``cluster_task`` are the thin Ray shells the pipeline uses.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import ray

from actors.checkpoints import run_checkpoint_store
from actors.clustering import cluster_for_ks, l2_normalize
from actors.datasets import (
    DatasetConfig,
    batches,
    build_dataset,
    thumbnail_loader,
)
from actors.datasets.loader import THUMBNAIL_BATCH
from actors.models import ModelConfig
from actors.training import Trainer, TrainingConfig
from storage import EmbeddingStore, PendingUnit, embedding_matrix, embeddings_table
from storage import schema as S

ROWS_PER_FRAGMENT = 8192  # activations held in memory per layer while extracting


def samples_unit_key(dataset_id: str, split: str) -> str:
    return f"{dataset_id}/{split}"


def write_samples(
    store: EmbeddingStore, config: DatasetConfig, split: str, workers: int = 0
) -> list[PendingUnit]:
    """The ``samples`` rows of one split, streamed in batches as uncommitted fragments.

    One row per sample: labels, names, file path, and a PNG thumbnail for the
    splits ``options.thumbnails`` names (made in the loader's worker processes).
    """
    data = build_dataset(config)
    h = data.hierarchy
    subclass, superclass = data.subclass(split), data.superclass(split)
    sample_index, paths = data.sample_index(split), data.paths(split)
    thumbnails = None
    if split in data.thumbnail_splits():
        thumbnails = iter(batches(thumbnail_loader(data, split, workers=workers)))

    def rows():
        for start in range(0, len(subclass), THUMBNAIL_BATCH):
            stop = min(start + THUMBNAIL_BATCH, len(subclass))
            n = stop - start
            yield pa.record_batch(
                {
                    "dataset_id": [config.dataset_id] * n,
                    "dataset": [config.name] * n,
                    "hierarchy": [config.hierarchy] * n,
                    "split": [split] * n,
                    "sample_index": pa.array(sample_index[start:stop], pa.int64()),
                    "subclass": pa.array(subclass[start:stop], pa.int32()),
                    "superclass": pa.array(superclass[start:stop], pa.int32()),
                    "subclass_name": [h.subclass_names[c] for c in subclass[start:stop]],
                    "superclass_name": [h.superclass_names[c] for c in superclass[start:stop]],
                    "path": pa.nulls(n, pa.string())
                    if paths is None
                    else pa.array([p.decode() for p in paths[start:stop]], pa.string()),
                    "thumbnail": pa.array(
                        next(thumbnails) if thumbnails else [None] * n, pa.binary()
                    ),
                }
            )

    key = samples_unit_key(config.dataset_id, split)
    return [store.write_fragments(S.SAMPLES, key, rows())]


def run_id_for(experiment_id: str, dataset_id: str, arch: str, seed: int) -> str:
    return f"{experiment_id}/{dataset_id}/{arch}/seed{seed}"


def embedding_unit_key(run_id: str, epoch: int, layer: str, split: str) -> str:
    return f"{run_id}/epoch{epoch}/{layer}/{split}"


RUN_STATUS_TRAINED = "done"
RUN_STATUS_PROBED = "probed"  # training.epochs = 0: the given weights, nothing trained


@dataclass(frozen=True)
class RunPlan:
    """Everything one trainer needs: which model to train on what, and what to extract.

    ``arch`` is the key the run is stored under (the model's name, or the spec
    item's key); ``model`` says what to build (default: ``ModelConfig(arch)``).
    """

    experiment_id: str
    arch: str
    dataset: DatasetConfig
    training: TrainingConfig
    seed: int
    splits: tuple[str, ...] = ("train", "test")  # the dataset's (training, held-out) splits
    device: str = "auto"
    embedding_dtype: str = "float32"
    loader_workers: int = 0
    model: ModelConfig | None = None
    probe_epochs: tuple[int, ...] = field(default=())

    @property
    def model_config(self) -> ModelConfig:
        return self.model or ModelConfig(self.arch)

    @property
    def run_id(self) -> str:
        return run_id_for(self.experiment_id, self.dataset.dataset_id, self.arch, self.seed)

    @property
    def fingerprint(self) -> str:
        """A hash of what determines the run's weights (checkpoints are tied to it)."""
        settings = {
            "model": asdict(self.model_config),
            "training": asdict(self.training),
            "dataset": self.dataset.dataset_id,
            "seed": self.seed,
        }
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    @property
    def keys(self) -> dict[str, str | int]:
        """The run's key columns, as every table that stores its rows names them."""
        return {
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "dataset_id": self.dataset.dataset_id,
            "arch": self.arch,
            "seed": self.seed,
        }


class TrainerWorker:
    """Trains one run and streams its layer outputs into the store as fragments."""

    def __init__(self, store: EmbeddingStore, plan: RunPlan, threads: int | None = None):
        self.store = store
        self.plan = plan
        self.threads = threads
        self.trainer = self._new_trainer()

    def _new_trainer(self) -> Trainer:
        plan, checkpoints = self.plan, None
        if plan.training.epochs > 0 and plan.training.checkpoint_every > 0:
            checkpoints = run_checkpoint_store(self.store, plan)
        return Trainer(
            plan.model_config,
            plan.dataset,
            plan.training,
            plan.seed,
            device=plan.device,
            threads=self.threads,
            loader_workers=plan.loader_workers,
            checkpoints=checkpoints,
        )

    def train_to(self, epoch: int) -> int:
        return self.trainer.train_to(epoch)

    def extract(self, epoch: int, keys_to_write: set[str]) -> list[PendingUnit]:
        """Write the (layer, split) units of ``epoch`` whose keys are in ``keys_to_write``.

        With nothing to write, nothing is trained either (a resumed run skips ahead).
        """
        if not keys_to_write:
            return []
        if self.trainer.epoch > epoch:
            # The pipeline asks for probe epochs in order, but a restarted actor (its process
            # was killed) may run the calls Ray re-sends out of order: start the model over,
            # from its newest checkpoint at or before ``epoch``.
            self.trainer = self._new_trainer()
        self.trainer.train_to(epoch)
        plan, pending = self.plan, []
        for split in plan.splits:
            layers = tuple(
                layer
                for layer in self.trainer.probe_layers
                if embedding_unit_key(plan.run_id, epoch, layer, split) in keys_to_write
            )
            if not layers:
                continue
            fragments: dict[str, list[PendingUnit]] = defaultdict(list)
            data = self.trainer.data
            subclass, superclass = data.subclass(split), data.superclass(split)
            sample_index = data.sample_index(split)
            chunks = self.trainer.iter_layer_chunks(split, layers, ROWS_PER_FRAGMENT)
            for positions, outputs in chunks:
                for layer, values in outputs.items():
                    table = embeddings_table(plan.experiment_id, plan.arch, layer)
                    rows = S.embedding_rows(
                        values,
                        sample_index=sample_index[positions],
                        subclass=subclass[positions],
                        superclass=superclass[positions],
                        epoch=epoch,
                        split=split,
                        **plan.keys,
                    )
                    key = embedding_unit_key(plan.run_id, epoch, layer, split)
                    fragments[layer].append(
                        self.store.write_fragments(
                            table,
                            key,
                            rows,
                            S.embeddings_schema(values.shape[1], plan.embedding_dtype),
                        )
                    )
            pending.extend(_combine(parts) for parts in fragments.values())
        return pending

    def finish(self, epoch: int | None = None) -> list[PendingUnit]:
        """The ``runs`` row that marks this run complete (at ``epoch``, default: where it is)."""
        plan, trainer = self.plan, self.trainer
        if epoch is not None:
            trainer.train_to(epoch)
        row = {
            "run_id": plan.run_id,
            "experiment_id": plan.experiment_id,
            "arch": plan.arch,
            "loss": plan.training.loss,
            "dataset_id": plan.dataset.dataset_id,
            "dataset": plan.dataset.name,
            "hierarchy": plan.dataset.hierarchy,
            "seed": plan.seed,
            "epochs": trainer.epoch,
            "status": RUN_STATUS_TRAINED if plan.training.epochs > 0 else RUN_STATUS_PROBED,
            "train_accuracy": trainer.accuracy(trainer.data.train_split),
            "test_accuracy": trainer.accuracy(trainer.data.heldout_split),
            "train_seconds": trainer.train_seconds,
            "created_at": datetime.now(timezone.utc),
        }
        table = pa.Table.from_pylist([row], schema=S.RUNS_SCHEMA.remove(0))
        return [self.store.write_fragments(S.RUNS, plan.run_id, table)]


def _combine(parts: list[PendingUnit]) -> PendingUnit:
    """One unit from the fragments of several writes with the same key."""
    fragments = [f for part in parts for f in part.fragments]
    return replace(parts[0], fragments=fragments, n_rows=sum(p.n_rows for p in parts))


@dataclass(frozen=True)
class ClusterUnit:
    """Cluster one stored layer of one run with one method, for every overclustering factor."""

    experiment_id: str
    run_id: str
    dataset_id: str
    arch: str
    seed: int
    epoch: int
    layer: str
    split: str
    scope: str  # "superclass" or "all"
    method: str
    factors: tuple[int, ...]
    subclasses_per_superclass: tuple[int, ...]
    random_state: int = 0
    backend: str = "auto"

    @property
    def unit_key(self) -> str:
        layer_key = embedding_unit_key(self.run_id, self.epoch, self.layer, self.split)
        return f"{layer_key}/{self.scope}/{self.method}"


def run_cluster_unit(store: EmbeddingStore, unit: ClusterUnit) -> list[PendingUnit]:
    """Read the unit's embeddings, cluster them (L2-normalised) and write the labels."""
    rows = store.embeddings(
        unit.experiment_id,
        unit.arch,
        unit.layer,
        run_id=unit.run_id,
        epoch=unit.epoch,
        split=unit.split,
        columns=["sample_index", "superclass", S.EMBEDDING],
    )
    X = l2_normalize(embedding_matrix(rows))
    sample_index = rows.column("sample_index").to_numpy()
    superclass = rows.column("superclass").to_numpy()
    if unit.scope == "all":
        groups = [("all", np.arange(len(X)), sum(unit.subclasses_per_superclass))]
    else:
        groups = [
            (f"superclass={s}", np.flatnonzero(superclass == s), unit.subclasses_per_superclass[s])
            for s in np.unique(superclass)
        ]
    records = []
    for scope, members, n_sub in groups:
        ks = {factor: n_sub * factor for factor in unit.factors}
        labels = cluster_for_ks(
            X[members],
            unit.method,
            sorted(set(ks.values())),
            random_state=unit.random_state,
            backend=unit.backend,
        )
        for factor, k in ks.items():
            records.append(
                {
                    "experiment_id": unit.experiment_id,
                    "run_id": unit.run_id,
                    "dataset_id": unit.dataset_id,
                    "arch": unit.arch,
                    "seed": unit.seed,
                    "epoch": unit.epoch,
                    "layer": unit.layer,
                    "split": unit.split,
                    "scope": scope,
                    "method": unit.method,
                    "overclustering_factor": factor,
                    "n_clusters": k,
                    "sample_index": sample_index[members],
                    "labels": labels[k],
                }
            )
    table = pa.Table.from_pylist(records, schema=S.CLUSTERINGS_SCHEMA.remove(0))
    return [store.write_fragments(S.CLUSTERINGS, unit.unit_key, table)]


# A worker lost to an OOM kill, a preempted pod or a lost node costs its units, not the run:
# Ray restarts a dead trainer (re-running ``__init__``: the model resumes from its
# checkpoints or retrains) and re-sends the calls that had not returned, and re-runs a task
# whose worker died. Units are keyed, so a redone unit is still committed once. Errors raised
# by our code (bad data, a full store) are not retried.
ACTOR_RESTARTS = 3
TASK_RETRIES = 3

TrainerActor = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)(TrainerWorker)
cluster_task = ray.remote(max_retries=TASK_RETRIES)(run_cluster_unit)
samples_task = ray.remote(max_retries=TASK_RETRIES)(write_samples)
