"""Data-parallel training (DDP, Ray Train's TorchTrainer, gloo on CPUs) through the pipeline."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from actors.checkpoints import run_checkpoints
from actors.datasets import build_dataset
from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from storage import EmbeddingStore, embedding_matrix
from storage import schema as S
from storage.blobs import BlobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _spawned_processes_import_the_tests(monkeypatch):
    """``spawn`` children unpickle this module's functions by name, with the parent's sys.path."""
    monkeypatch.syspath_prepend(str(REPO))


SPEC = {
    "name": "ddp",
    "datasets": [{"name": "digits", "hierarchy": "coarse"}],
    "archs": ["small_cnn"],
    "seeds": [0],
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.1},
    "probe_epochs": [1, 2],
    "clustering": {"methods": ["ward"]},
    "resources": {"trainer_workers": 2, "trainer_cpus": 1},
}


def test_two_gloo_processes_train_and_the_actor_extracts_their_checkpoints(tmp_path, local_ray):
    store = EmbeddingStore(str(tmp_path / "store"))
    spec = ExperimentSpec.from_dict(SPEC)
    run_experiment(spec, store)
    runs = store.read(S.RUNS).to_pandas()
    assert len(runs) == 1 and runs.status[0] == "done" and runs.epochs[0] == 2
    assert runs.test_accuracy[0] > 0.5  # chance is 0.2
    folder = run_checkpoints("ddp", runs.run_id[0])
    blobs = BlobStore(store)
    assert blobs.list(folder) == ["epoch=1.pt", "epoch=2.pt"]  # the probe epochs are kept
    state = torch.load(tmp_path / "store" / folder / "epoch=2.pt", weights_only=True)
    assert state["world"] == 2 and len(state["rng_ranks"]) == 2
    # the extracting actor trained nothing itself: its runs row has the DDP run's time
    assert runs.train_seconds[0] == pytest.approx(state["train_seconds"])
    n_test = build_dataset(spec.datasets[0].config()).num_samples("test")
    for epoch in (1, 2):
        rows = store.embeddings("ddp", "small_cnn", "fc2", epoch=epoch, split="test")
        assert embedding_matrix(rows).shape == (n_test, 64)


# -- DDP = one process on the whole batch, for a model without batch statistics ----------
TINY_VIT = {"patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
SHAPES = {"train_per_subclass": 16, "test_per_subclass": 2}  # 320 images: 5 batches of 64


def _train(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from actors.datasets import DatasetConfig
    from actors.models import ModelConfig
    from actors.training import Trainer, TrainingConfig

    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    trainer = Trainer(
        ModelConfig("vit_b_16", options=TINY_VIT),
        DatasetConfig("shapes", "natural", options=SHAPES),
        # SGD: Adam would turn rounding noise in gradients that are zero in exact
        # arithmetic (the attention's key bias) into whole steps
        TrainingConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0),
        seed=0,
        threads=1,
        distributed=(rank, world),
    )
    if world == 1:
        torch.save(trainer.model.state_dict(), out + ".init")
    trainer.train_to(1)
    if rank == 0:
        torch.save(trainer.model.state_dict(), out)
    if world > 1:
        dist.destroy_process_group()


def test_two_processes_take_the_steps_one_process_takes_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(
        _train, args=(2, init, str(tmp_path / "ddp.pt")), nprocs=2, start_method="spawn"
    )
    mp.start_processes(
        _train, args=(1, init, str(tmp_path / "one.pt")), nprocs=1, start_method="spawn"
    )
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    start = torch.load(str(tmp_path / "one.pt") + ".init", weights_only=True)
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert moved > 1e-2  # training did move the weights


# -- a DDP run killed between epochs resumes from its checkpoint to the same weights ------
DDP_EPOCHS = 3
DDP_RUN = "checkpoints/ddp/run"


def _train_with_checkpoints(rank: int, world: int, init: str, root: str) -> None:
    import torch.distributed as dist

    from actors.checkpoints import CheckpointStore
    from actors.datasets import DatasetConfig
    from actors.training import Trainer, TrainingConfig
    from storage.blobs import BlobStore

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    checkpoints = CheckpointStore(
        BlobStore(EmbeddingStore(root)), DDP_RUN, fingerprint="f", keep_last=10
    )
    trainer = Trainer(
        "small_cnn",
        DatasetConfig("shapes", "natural", options=SHAPES),
        TrainingConfig(epochs=DDP_EPOCHS, batch_size=32, ema_decay=0.9, dropout=0.2),
        seed=0,
        threads=1,
        checkpoints=checkpoints,
        distributed=(rank, world),
    )
    trainer.train_to(DDP_EPOCHS)
    dist.destroy_process_group()


def _launch(tmp_path, root, name: str):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / name}"
    return mp.start_processes(
        _train_with_checkpoints,
        args=(2, init, str(root)),
        nprocs=2,
        start_method="spawn",
        join=False,
    )


def test_a_ddp_run_killed_between_epochs_resumes_to_the_same_weights(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _launch(tmp_path, whole, "rendezvous-whole").join()
    first = _launch(tmp_path, killed, "rendezvous-first")
    while not (killed / DDP_RUN / "epoch=1.pt").exists():
        assert all(p.is_alive() for p in first.processes), "a DDP process ended early"
        time.sleep(0.01)
    for process in first.processes:  # what a preempted pod does to its processes
        os.kill(process.pid, signal.SIGKILL)
    for process in first.processes:
        process.join(timeout=30)
    saved = sorted(p.name for p in (killed / DDP_RUN).iterdir() if p.suffix == ".pt")
    assert f"epoch={DDP_EPOCHS}.pt" not in saved, "killed too late to test a resume"
    first_mtime = (killed / DDP_RUN / "epoch=1.pt").stat().st_mtime_ns

    _launch(tmp_path, killed, "rendezvous-resumed").join()
    assert (killed / DDP_RUN / "epoch=1.pt").stat().st_mtime_ns == first_mtime  # not retrained
    a = torch.load(killed / DDP_RUN / f"epoch={DDP_EPOCHS}.pt", weights_only=True)
    b = torch.load(whole / DDP_RUN / f"epoch={DDP_EPOCHS}.pt", weights_only=True)
    assert a["world"] == b["world"] == 2
    for part in ("model", "optimizer", "ema", "rng_ranks"):
        _assert_equal(a[part], b[part], part)
    assert len(a["rng_ranks"]) == 2


def _assert_equal(a, b, where: str) -> None:
    """Tensors bit-equal, containers recursively, anything else ==."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
