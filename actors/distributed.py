"""Train one model on several processes (DDP) with Ray Train's ``TorchTrainer``.

A run whose ``resources`` ask for several trainer processes (``trainer_gpus`` > 1,
one GPU each with NCCL; or ``trainer_workers`` > 1 on CPUs with gloo) is
trained here first, before anything is extracted: every process builds the
same :class:`actors.training.Trainer` with its ``(rank, world)``, trains on
its shard of each epoch, and rank 0 writes the epoch checkpoints under the
store root, the probe epochs' included. The run's usual one-device actor then
extracts each probe epoch from its checkpoint (it trains nothing itself).

A process lost mid-run (a preempted pod) makes Ray Train restart the group, up
to :data:`MAX_FAILURES` times; every process resumes from the newest
checkpoint, as a re-run of the spec does.
"""

from __future__ import annotations

import ray

from actors.checkpoints import run_checkpoint_store
from storage import EmbeddingStore

MAX_FAILURES = 3  # group restarts Ray Train allows one DDP run


def _train_loop(config: dict) -> None:
    """One DDP process: Ray Train has set up the process group already."""
    import torch
    from ray import train

    from actors.training import Trainer

    context = train.get_context()
    plan, store = config["plan"], config["store"]
    device = "cpu"
    if config["use_gpu"] and torch.cuda.is_available():
        from ray.train.torch import get_device

        device = str(get_device())
    trainer = Trainer(
        plan.model_config,
        plan.dataset,
        plan.training,
        plan.seed,
        device=device,
        threads=config["threads"],
        loader_workers=plan.loader_workers,
        checkpoints=run_checkpoint_store(store, plan),
        distributed=(context.get_world_rank(), context.get_world_size()),
    )
    trainer.train_to(config["epoch"])


def train_data_parallel(
    store: EmbeddingStore,
    plan,
    epoch: int,
    *,
    workers: int,
    cpus_per_worker: float,
    use_gpu: bool,
) -> list:
    """Train ``plan``'s model to ``epoch`` on ``workers`` DDP processes; returns no units.

    Where the checkpoint of ``epoch`` exists already, the processes load it and stop.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "plan": plan,
            "store": store,
            "epoch": epoch,
            "use_gpu": use_gpu,
            "threads": max(1, int(cpus_per_worker)),
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=plan.run_id.replace("/", "_"),
            failure_config=FailureConfig(max_failures=MAX_FAILURES),
        ),
    )
    trainer.fit()
    return []


train_data_parallel_task = ray.remote(train_data_parallel)
