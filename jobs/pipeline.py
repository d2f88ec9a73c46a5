"""Drive a spec through the stages: train + extract -> cluster -> score.

Every stage lists its units of work, drops those whose keys are already
committed, runs the rest as Ray actors/tasks, and commits each unit's writes in
one transaction as soon as it returns. Re-running a finished spec therefore
does nothing, and re-running after a crash finishes the job without a duplicate
row.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.checkpoints import experiment_checkpoints
from actors.distributed import train_data_parallel_task
from actors.workers import (
    TASK_RETRIES,
    ClusterUnit,
    RunPlan,
    TrainerActor,
    cluster_task,
    embedding_unit_key,
    run_id_for,
    samples_task,
    samples_unit_key,
)
from jobs.compare import CLUSTERING_METRICS
from jobs.intraclass import intraclass_units, score_intraclass
from jobs.plan import CapacityPlan, check_capacity
from jobs.similarity_stage import SimilarityUnit, score_similarity, similarity_metrics
from jobs.spec import ArchSpec, DatasetSpec, ExperimentSpec, SpecError, load_dataset
from services.scoring import (
    ConsistencyUnit,
    LayerUnit,
    score_clusterings,
    score_consistency,
    score_layer,
)
from storage import EmbeddingStore, StoreError, embeddings_table
from storage import schema as S
from storage.blobs import BlobStore
from storage.filters import where

score_clusterings_task = ray.remote(max_retries=TASK_RETRIES)(score_clusterings)
score_layer_task = ray.remote(max_retries=TASK_RETRIES)(score_layer)
score_consistency_task = ray.remote(max_retries=TASK_RETRIES)(score_consistency)
score_intraclass_task = ray.remote(max_retries=TASK_RETRIES)(score_intraclass)
score_similarity_task = ray.remote(max_retries=TASK_RETRIES)(score_similarity)


class WorkerLostError(RuntimeError):
    """A Ray worker or node died more often than its retries allow; re-running resumes."""


@dataclass
class StageCounts:
    """Units committed by one pipeline call, per stage (0 everywhere on a no-op re-run)."""

    committed: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, n: int = 1) -> None:
        self.committed[stage] = self.committed.get(stage, 0) + n


def init_ray(address: str | None = None, *, system_config: dict | None = None) -> None:
    """Connect to the cluster at ``address``, or start a local Ray instance.

    ``system_config`` (Ray's ``_system_config``) only applies to a local instance.
    """
    if ray.is_initialized():
        return
    # Ray starts its processes with fork+exec, which is safe for Lance's runtime.
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=True,
        _system_config=system_config if address is None else None,
    )


def run_experiment(
    spec: ExperimentSpec,
    store: EmbeddingStore,
    *,
    address: str | None = None,
    fresh: bool = False,
    console: Console | None = None,
) -> StageCounts:
    """Run (or resume) every stage of ``spec`` against ``store``."""
    console = console or Console(stderr=True)
    capacity = check_capacity(spec)  # refuses a fit too large for a worker, before any work
    counts = StageCounts()
    spec.register_arch_keys()
    check_gpus(spec, address)
    init_ray(address)
    check_shared_store(store)
    created = register_experiment(spec, store, fresh=fresh)
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    new_samples: list[str] = []
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            write_samples(spec, store, progress, counts, new_samples)
            train_and_extract(spec, store, progress, counts)
            cluster(spec, store, progress, counts, capacity)
            score(spec, store, progress, counts)
    except StoreError:
        # Data the store refused (a NaN embedding, a wrong dimension) means the spec must
        # change, so an experiment this call began is removed: the changed spec can then
        # reuse its name. A corrupt image file (DatasetError) keeps the work: fixing the
        # file and re-running the same spec resumes.
        if created:
            store.delete_experiment(spec.experiment_id)
            BlobStore(store).delete_tree(experiment_checkpoints(spec.experiment_id))
            store.delete_units(S.SAMPLES, new_samples)
        raise
    return counts


def check_shared_store(store: EmbeddingStore) -> None:
    """Refuse a local store root when Ray's nodes do not share this machine's disk.

    Workers write fragments where the store root points; on another node a local path is
    that node's own disk, which the committing driver never sees.
    """
    if "://" in store.root:
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1:
        raise SpecError(
            f"store {store.root!r} is a local path but this Ray cluster has {len(nodes)} "
            "nodes, which do not share a disk; pass --store s3://bucket/prefix (an object "
            "store every node reaches)"
        )


def check_gpus(spec: ExperimentSpec, address: str | None) -> None:
    """Refuse, before anything is written, a spec asking for GPUs a local Ray does not have.

    A remote cluster (``address``) may add GPU nodes on demand (KubeRay
    autoscaling), so there the request is left to Ray's scheduler.
    """
    r = spec.resources
    wanted = max(r.trainer_gpus, r.worker_gpus)
    if address is not None or wanted == 0:
        return
    init_ray(None)
    have = ray.cluster_resources().get("GPU", 0)
    if wanted > have:
        field = "trainer_gpus" if r.trainer_gpus >= r.worker_gpus else "worker_gpus"
        raise SpecError(
            f"resources.{field} = {wanted:g} asks for GPUs but this machine's Ray has "
            f"{have:g}; set resources.trainer_gpus and worker_gpus to 0 and device to auto "
            "or cpu, or pass --address of a cluster with GPUs"
        )


# -- stage 0: the experiment row and the samples table ---------------------------
def register_experiment(spec: ExperimentSpec, store: EmbeddingStore, *, fresh: bool) -> bool:
    """Record the spec; refuse to mix a changed spec into an existing experiment.

    Returns whether the experiment was created by this call.
    """
    if fresh:
        store.delete_experiment(spec.experiment_id)
        BlobStore(store).delete_tree(experiment_checkpoints(spec.experiment_id))
    rows = store.read(
        S.EXPERIMENTS, columns=["spec"], filter=where(experiment_id=spec.experiment_id)
    )
    if rows.num_rows:
        if rows.column("spec")[0].as_py() != spec.canonical_json():
            raise SpecError(
                f"experiment {spec.experiment_id!r} already exists in {store.root} with a "
                "different spec; pass --fresh to replace it or give the spec another name"
            )
        return False
    row = {
        "experiment_id": spec.experiment_id,
        "name": spec.name,
        "spec": spec.canonical_json(),
        "created_at": datetime.now(timezone.utc),
    }
    return store.write_unit(
        S.EXPERIMENTS,
        spec.experiment_id,
        pa.Table.from_pylist([row], schema=S.EXPERIMENTS_SCHEMA.remove(0)),
    )


def write_samples(
    spec: ExperimentSpec,
    store: EmbeddingStore,
    progress: Progress,
    counts: StageCounts,
    new_keys: list[str],
) -> None:
    """One ``samples`` unit per (dataset, split), written by a Ray task that reads the data.

    The keys of the units it writes are appended to ``new_keys``.
    """
    committed = store.committed_keys(S.SAMPLES)
    pending = {}
    for dataset_spec in spec.datasets:
        data = load_dataset(dataset_spec)
        for split in data.splits:
            key = samples_unit_key(data.dataset_id, split)
            if key in committed:
                continue
            new_keys.append(key)
            task = samples_task.options(num_cpus=spec.resources.trainer_cpus)
            pending[task.remote(store, data.config, split, spec.resources.workers)] = None
    had_work = bool(pending)
    _drain("samples", pending, store, progress, counts)
    if had_work:
        _optimize(store, {S.SAMPLES})


# -- stage 1: train and extract --------------------------------------------------
def run_plan(spec: ExperimentSpec, dataset: DatasetSpec, arch: ArchSpec, seed: int) -> RunPlan:
    """The plan of the run that trains ``arch`` on ``dataset`` with ``seed``."""
    return RunPlan(
        experiment_id=spec.experiment_id,
        arch=arch.stored_key,
        model=arch.config(),
        probe_epochs=tuple(spec.probe_epochs_for(arch.stored_key)),
        dataset=dataset.config(),
        training=spec.training_for(arch.stored_key).config(),
        seed=seed,
        splits=load_dataset(dataset).splits,
        device=spec.resources.device,
        embedding_dtype=spec.storage.embedding_dtype,
        loader_workers=spec.resources.workers,
    )


def run_plans(spec: ExperimentSpec) -> list[RunPlan]:
    """One plan per (dataset, arch, seed), in spec order."""
    return [
        run_plan(spec, *combination)
        for combination in itertools.product(spec.datasets, spec.arch_specs, spec.seeds)
    ]


def train_and_extract(
    spec: ExperimentSpec, store: EmbeddingStore, progress: Progress, counts: StageCounts
) -> None:
    """Train every unfinished run in its own actor; commit each layer as it is extracted."""
    done = store.committed_keys(S.RUNS)
    plans = [p for p in run_plans(spec) if p.run_id not in done]
    committed = {
        arch.stored_key: {
            layer: store.committed_keys(
                embeddings_table(spec.experiment_id, arch.stored_key, layer)
            )
            for layer in arch.probe_layers()
        }
        for arch in spec.arch_specs
    }
    r = spec.resources
    if r.ddp_workers > 1 and spec.training.epochs > 0:
        # DDP runs train first, on their process groups; their actors then extract
        # every probe epoch from its checkpoint
        task = train_data_parallel_task.options(num_cpus=0)
        ddp = {
            task.remote(
                store,
                plan,
                plan.probe_epochs[-1],
                workers=r.ddp_workers,
                cpus_per_worker=r.trainer_cpus,
                use_gpu=r.trainer_gpus > 0,
            ): None
            for plan in plans
        }
        _drain("train (DDP)", ddp, store, progress, counts)
    pending: dict[ray.ObjectRef, Callable[[], None] | None] = {}
    threads = max(1, int(r.trainer_cpus))
    for plan in plans:
        actor = TrainerActor.options(num_cpus=r.trainer_cpus, num_gpus=r.extractor_gpus).remote(
            store, plan, threads
        )
        refs = []
        for epoch in plan.probe_epochs:
            missing = {
                embedding_unit_key(plan.run_id, epoch, layer, split)
                for layer, keys in committed[plan.arch].items()
                for split in plan.splits
                if embedding_unit_key(plan.run_id, epoch, layer, split) not in keys
            }
            refs.append(actor.extract.remote(epoch, missing))
        refs.append(actor.finish.remote(plan.probe_epochs[-1]))
        pending.update(dict.fromkeys(refs, _killer(actor, len(refs))))
    _drain("train + extract", pending, store, progress, counts)
    if plans:
        tables = {
            embeddings_table(spec.experiment_id, p.arch, layer)
            for p in plans
            for layer in spec.arch(p.arch).probe_layers()
        }
        _optimize(store, tables | {S.RUNS})


def _killer(actor, calls: int) -> Callable[[], None]:
    """A callback that kills ``actor`` (freeing its CPU) once all its ``calls`` returned.

    Not at ``finish`` alone: a restarted actor may finish before a re-sent extract.
    """
    left = [calls]

    def returned() -> None:
        left[0] -= 1
        if left[0] == 0:
            ray.kill(actor)

    return returned


# -- stage 2: cluster ------------------------------------------------------------
def cluster_units(spec: ExperimentSpec) -> list[ClusterUnit]:
    units = []
    c = spec.clustering
    for dataset, arch, seed in itertools.product(spec.datasets, spec.arch_specs, spec.seeds):
        plan = run_plan(spec, dataset, arch, seed)
        data = load_dataset(dataset)
        per_super = data.hierarchy.subclasses_per_superclass()
        for epoch, layer, method in itertools.product(
            plan.probe_epochs, arch.probe_layers(), c.methods
        ):
            units.append(
                ClusterUnit(
                    **plan.keys,
                    epoch=epoch,
                    layer=layer,
                    split=data.resolve_split(c.split),
                    scope=c.scope,
                    method=method,
                    factors=tuple(c.overclustering_factors),
                    subclasses_per_superclass=tuple(int(n) for n in per_super),
                    random_state=c.random_state,
                    backend=c.backend,
                )
            )
    return units


def cluster(
    spec: ExperimentSpec,
    store: EmbeddingStore,
    progress: Progress,
    counts: StageCounts,
    capacity: CapacityPlan | None = None,
) -> None:
    committed = store.committed_keys(S.CLUSTERINGS)
    memory = cluster_memory(spec, capacity or check_capacity(spec))
    pending = {
        cluster_task.options(
            num_cpus=spec.resources.worker_cpus,
            num_gpus=spec.resources.worker_gpus,
            memory=memory[unit.method],
        ).remote(store, unit): None
        for unit in cluster_units(spec)
        if unit.unit_key not in committed
    }
    had_work = bool(pending)
    _drain("cluster", pending, store, progress, counts)
    if had_work:
        _optimize(store, {S.CLUSTERINGS})


def cluster_memory(spec: ExperimentSpec, capacity: CapacityPlan) -> dict[str, int]:
    """Bytes of Ray's ``memory`` resource each method's clustering tasks declare.

    The plan's peak of the method's largest fit (distance matrix or vectors, plus the
    split read), so Ray does not place two large fits on one node. Without
    ``resources.worker_memory_gb`` the request is capped at the largest node's memory
    (the plan's budget was this machine's; a larger request could never be placed).
    """
    peaks = {peak.method: peak.peak_bytes for peak in capacity.clustering}
    if spec.resources.worker_memory_gb is None:
        largest = max(n["Resources"].get("memory", 0) for n in ray.nodes() if n["Alive"])
        peaks = {method: min(peak, int(largest)) for method, peak in peaks.items()}
    return {method: max(1, int(peak)) for method, peak in peaks.items()}


# -- stage 3: score --------------------------------------------------------------
def score(
    spec: ExperimentSpec, store: EmbeddingStore, progress: Progress, counts: StageCounts
) -> None:
    """Scores per clustering, NCC per layer, intraclass measures per run, and cross-seed
    ARI per pair of layers."""
    opts = {"num_cpus": spec.resources.worker_cpus}
    done_metrics = store.committed_keys(S.METRICS)
    done_pairs = store.committed_keys(S.PAIRS)
    pending = {}
    for unit in cluster_units(spec):
        if f"scores/{unit.unit_key}" not in done_metrics:
            ref = score_clusterings_task.options(**opts).remote(
                store, unit.unit_key, tuple(spec.metrics.clustering)
            )
            pending[ref] = None
    for unit in layer_units(spec):
        if unit.unit_key not in done_metrics:
            pending[score_layer_task.options(**opts).remote(store, unit)] = None
    for unit in intraclass_units(spec, run_plans(spec)):
        if unit.unit_key not in done_metrics:
            pending[score_intraclass_task.options(**opts).remote(store, unit)] = None
    for unit in consistency_units(spec):
        if unit.unit_key not in done_pairs:
            pending[score_consistency_task.options(**opts).remote(store, unit)] = None
    for unit in similarity_units(spec):
        if unit.unit_key not in done_pairs:
            pending[score_similarity_task.options(**opts).remote(store, unit)] = None
    had_work = bool(pending)
    _drain("score", pending, store, progress, counts)
    if had_work:
        _optimize(store, {S.METRICS, S.PAIRS})


def layer_units(spec: ExperimentSpec) -> list[LayerUnit]:
    metrics = tuple(spec.metrics.representation)
    if not metrics:
        return []
    return [
        LayerUnit(
            spec.experiment_id,
            p.run_id,
            p.dataset.dataset_id,
            p.arch,
            p.seed,
            epoch,
            layer,
            metrics,
            splits=p.splits,
            clp_method=spec.clustering.methods[0],
            random_state=spec.clustering.random_state,
        )
        for p in run_plans(spec)
        for epoch in p.probe_epochs
        for layer in spec.arch(p.arch).probe_layers()
    ]


def consistency_units(spec: ExperimentSpec) -> list[ConsistencyUnit]:
    units = []
    c = spec.clustering
    metrics = tuple(m for m in spec.metrics.consistency if m in CLUSTERING_METRICS)
    if len(spec.seeds) < 2 or not metrics:
        return units
    for dataset, arch_spec in itertools.product(spec.datasets, spec.arch_specs):
        arch = arch_spec.stored_key
        dataset_id = dataset.config().dataset_id
        split = load_dataset(dataset).resolve_split(c.split)
        runs = tuple(
            (run_id_for(spec.experiment_id, dataset_id, arch, seed), seed) for seed in spec.seeds
        )
        for epoch, method, factor in itertools.product(
            spec.probe_epochs_for(arch), c.methods, c.overclustering_factors
        ):
            units.append(
                ConsistencyUnit(
                    experiment_id=spec.experiment_id,
                    dataset_id=dataset_id,
                    arch=arch,
                    epoch=epoch,
                    split=split,
                    method=method,
                    factor=factor,
                    runs=runs,
                    metrics=metrics,
                )
            )
    return units


def similarity_units(spec: ExperimentSpec) -> list[SimilarityUnit]:
    """CKA / mknn between seeds: one unit per (dataset, arch, probe epoch)."""
    metrics = similarity_metrics(spec.metrics.consistency)
    if len(spec.seeds) < 2 or not metrics:
        return []
    return [
        SimilarityUnit(
            experiment_id=spec.experiment_id,
            dataset_id=dataset.config().dataset_id,
            arch=arch.stored_key,
            epoch=epoch,
            split=load_dataset(dataset).resolve_split(spec.clustering.split),
            runs=tuple(
                (run_id_for(spec.experiment_id, dataset.config().dataset_id, arch.stored_key, s), s)
                for s in spec.seeds
            ),
            metrics=metrics,
        )
        for dataset, arch in itertools.product(spec.datasets, spec.arch_specs)
        for epoch in spec.probe_epochs_for(arch.stored_key)
    ]


# -- shared machinery ------------------------------------------------------------
def _optimize(store: EmbeddingStore, tables: set[str]) -> None:
    """Compact and index the tables a stage wrote (its committers are all done)."""
    for table in sorted(tables):
        store.optimize(table)


def _drain(
    stage: str,
    pending: dict[ray.ObjectRef, Callable[[], None] | None],
    store: EmbeddingStore,
    progress: Progress,
    counts: StageCounts,
) -> None:
    """Commit each unit's writes as its task returns; then run its callback."""
    task = progress.add_task(stage, total=len(pending))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            for unit in _result(stage, ref):
                counts.add(stage, int(store.commit(unit)))
            callback = pending.pop(ref)
            if callback is not None:
                callback()
            progress.advance(task)


# What Ray raises once a unit's worker, actor or node is gone for good (retries spent).
LOST_WORKER_ERRORS = (
    ray.exceptions.ActorDiedError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OutOfMemoryError,
)


def _result(stage: str, ref: ray.ObjectRef) -> list:
    """The units a task returned; a worker lost for good becomes one sentence."""
    try:
        return ray.get(ref)
    except LOST_WORKER_ERRORS as exc:
        raise WorkerLostError(
            f"a Ray worker of the {stage!r} stage died ({type(exc).__name__}: killed, out of "
            f"memory or its node lost) after {TASK_RETRIES} retries; what was committed is "
            "kept: run the same command again to resume"
        ) from None
