"""Epoch checkpoints under the store root: save, find the newest, prune.

A run's checkpoints are ``checkpoints/<experiment>/<run_id>/epoch=N.pt``
(local or object store, through :class:`storage.blobs.BlobStore`), each a
``torch.save`` dict holding everything that makes the next epoch identical
to an uninterrupted run's: model, optimiser, EMA, the schedule's position and
the RNG states (see :meth:`actors.training.Trainer.state_dict`). Each also
holds a fingerprint of the run's settings; a checkpoint written under another
fingerprint (a different spec under the same run id) is never resumed from.
"""

from __future__ import annotations

import io
import re

import torch

from storage import EmbeddingStore
from storage.blobs import BlobStore

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FORMAT = "stratalens-checkpoint-1"
CHECKPOINT_NAME = re.compile(r"^epoch=(\d+)\.pt$")


def experiment_checkpoints(experiment_id: str) -> str:
    """The folder under the store root holding every checkpoint of an experiment."""
    return f"{CHECKPOINTS_DIR}/{experiment_id}"


def run_checkpoints(experiment_id: str, run_id: str) -> str:
    """The folder under the store root holding a run's checkpoints."""
    return f"{experiment_checkpoints(experiment_id)}/{run_id}"


def checkpoint_path(experiment_id: str, run_id: str, epoch: int) -> str:
    return f"{run_checkpoints(experiment_id, run_id)}/epoch={epoch}.pt"


class CheckpointStore:
    """The checkpoints of one run.

    Parameters
    ----------
    blobs : BlobStore
    folder : str
        ``checkpoints/<experiment>/<run_id>``.
    fingerprint : str
        Identifies the run's settings; stored in each checkpoint and checked on load.
    keep_last : int
        After a save, only the newest ``keep_last`` checkpoints are kept ...
    keep_epochs : tuple of int
        ... besides those of these epochs (the probe epochs).
    """

    def __init__(
        self,
        blobs: BlobStore,
        folder: str,
        *,
        fingerprint: str,
        keep_last: int = 1,
        keep_epochs: tuple[int, ...] = (),
    ):
        self.blobs, self.folder, self.fingerprint = blobs, folder, fingerprint
        self.keep_last, self.keep_epochs = keep_last, frozenset(keep_epochs)

    def epochs(self) -> list[int]:
        """Epochs with a saved checkpoint, ascending."""
        found = (CHECKPOINT_NAME.match(name) for name in self.blobs.list(self.folder))
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, epoch: int) -> str:
        return f"{self.folder}/epoch={epoch}.pt"

    def save(self, epoch: int, state: dict) -> None:
        """Write ``state`` as ``epoch=N.pt``, then prune older ones."""
        buffer = io.BytesIO()
        torch.save({**state, "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint}, buffer)
        self.blobs.put(self.path(epoch), buffer.getvalue())
        saved = self.epochs()
        newest = set(saved[-self.keep_last :]) if self.keep_last > 0 else set()
        for old in saved:
            if old not in newest and old not in self.keep_epochs:
                self.blobs.delete(self.path(old))

    def load_newest(self, *, after: int, upto: int) -> dict | None:
        """The newest checkpoint with ``after < epoch <= upto`` of this run, or None.

        Checkpoints of another fingerprint are stale (another spec wrote them
        under this run id): the folder is cleared and None returned.
        """
        for epoch in reversed(self.epochs()):
            if not after < epoch <= upto:
                continue
            state = torch.load(
                io.BytesIO(self.blobs.get(self.path(epoch))),
                map_location="cpu",
                weights_only=True,
            )
            if state.get("fingerprint") != self.fingerprint:
                self.blobs.delete_tree(self.folder)
                return None
            return state
        return None


def run_checkpoint_store(store: EmbeddingStore, plan) -> CheckpointStore:
    """The checkpoints of ``plan`` (an :class:`actors.workers.RunPlan`) under the store root."""
    return CheckpointStore(
        BlobStore(store),
        run_checkpoints(plan.experiment_id, plan.run_id),
        fingerprint=plan.fingerprint,
        keep_last=plan.training.keep_checkpoints,
        keep_epochs=plan.probe_epochs,
    )
