"""Epoch checkpoints: a run killed between epochs resumes to bit-equal weights on the CPU."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from actors.checkpoints import CheckpointStore
from actors.datasets import DatasetConfig
from actors.datasets.synthetic import write_imagefolder
from actors.training import Trainer, TrainingConfig
from storage import EmbeddingStore
from storage.blobs import BlobStore

REPO = Path(__file__).parents[2]
EPOCHS = 3
RUN = "checkpoints/exp/exp/shapes/small_cnn/seed0"
# Dropout draws from torch's global RNG and the EMA carries state: both must survive a resume.
RECIPE = {"epochs": EPOCHS, "ema_decay": 0.9, "dropout": 0.2, "nesterov": True}
TRAIN_SCRIPT = f"""
import sys
from actors.checkpoints import CheckpointStore
from actors.datasets import DatasetConfig
from actors.training import Trainer, TrainingConfig
from storage import EmbeddingStore
from storage.blobs import BlobStore

checkpoints = CheckpointStore(
    BlobStore(EmbeddingStore(sys.argv[1])), {RUN!r}, fingerprint="f", keep_last=10
)
trainer = Trainer(
    "small_cnn", DatasetConfig("shapes", "natural"), TrainingConfig(**{RECIPE!r}),
    seed=0, threads=1, checkpoints=checkpoints,
)
trainer.train_to({EPOCHS})
"""


def train(root: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def load(root: Path, epoch: int) -> dict:
    return torch.load(root / RUN / f"epoch={epoch}.pt", weights_only=True)


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")


def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_same_weights(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    uninterrupted = train(whole)
    first = train(killed)
    deadline = time.monotonic() + 120
    while not (killed / RUN / "epoch=1.pt").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    saved = sorted(p.name for p in (killed / RUN).iterdir() if p.suffix == ".pt")
    assert f"epoch={EPOCHS}.pt" not in saved, "killed too late to test a resume"
    first_mtime = (killed / RUN / "epoch=1.pt").stat().st_mtime_ns

    resumed = train(killed)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stdout.read()
    # epoch 1 was not trained again: its checkpoint is the killed run's
    assert (killed / RUN / "epoch=1.pt").stat().st_mtime_ns == first_mtime
    a, b = load(killed, EPOCHS), load(whole, EPOCHS)
    for part in ("model", "optimizer", "ema", "rng"):
        assert_same_tensors(a[part], b[part], part)
    assert a["epoch"] == EPOCHS and a["fingerprint"] == "f"


def test_state_dict_round_trip_with_augmentation_and_loader_workers(tmp_path):
    root, hierarchy = write_imagefolder(
        tmp_path / "data", {"a": ["a1", "a2"], "b": ["b1", "b2"]}, {"train": 12, "val": 4}, size=20
    )
    options = {"root": str(root), "hierarchy_file": str(hierarchy), "image_size": 16}
    data = DatasetConfig("imagefolder", "natural", options=options)
    recipe = TrainingConfig(epochs=3, batch_size=8, ema_decay=0.9, dropout=0.2)

    def trainer():
        return Trainer("small_cnn", data, recipe, seed=3, threads=1, loader_workers=1)

    whole = trainer()
    whole.train_to(3)
    first = trainer()
    first.train_to(1)
    state = first.state_dict()
    resumed = trainer()
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    resumed.train_to(3)
    assert_same_tensors(resumed.model.state_dict(), whole.model.state_dict())
    assert_same_tensors(resumed.state_dict()["ema"], whole.state_dict()["ema"])


def checkpoint_store(root: Path, fingerprint="f", **kwargs) -> CheckpointStore:
    return CheckpointStore(
        BlobStore(EmbeddingStore(str(root))), "checkpoints/e/r", fingerprint=fingerprint, **kwargs
    )


def test_pruning_keeps_the_newest_and_the_probe_epochs(tmp_path):
    store = checkpoint_store(tmp_path, keep_last=1, keep_epochs=(2,))
    for epoch in range(1, 5):
        store.save(epoch, {"epoch": epoch})
    assert store.epochs() == [2, 4]
    assert store.load_newest(after=0, upto=3)["epoch"] == 2
    assert store.load_newest(after=2, upto=3) is None
    assert store.load_newest(after=0, upto=9)["epoch"] == 4


def test_checkpoints_of_another_spec_are_never_resumed(tmp_path):
    checkpoint_store(tmp_path, fingerprint="old").save(3, {"epoch": 3})
    stale = checkpoint_store(tmp_path, fingerprint="new")
    assert stale.load_newest(after=0, upto=5) is None
    assert stale.epochs() == []  # cleared


def test_blob_store_local(tmp_path):
    blobs = BlobStore(EmbeddingStore(str(tmp_path / "store")))
    assert blobs.list("a") == [] and not blobs.exists("a/x.pt")
    blobs.put("a/b/x.pt", b"one")
    blobs.put("a/b/x.pt", b"two")  # replaced whole
    blobs.put("a/b/y.pt", b"y")
    (tmp_path / "store/a/b/z.pt.1234.partial").write_bytes(b"half")  # a killed writer's
    assert blobs.list("a/b") == ["x.pt", "y.pt"] and blobs.get("a/b/x.pt") == b"two"
    blobs.delete("a/b/y.pt")
    blobs.delete("a/b/y.pt")
    assert blobs.list("a/b") == ["x.pt"]
    blobs.delete_tree("a")
    blobs.delete_tree("a")
    assert not (tmp_path / "store/a").exists()
    with pytest.raises(FileNotFoundError):
        blobs.get("a/b/x.pt")
