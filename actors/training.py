"""Train a model on superclass labels and extract its probed layers.

Pure torch: no Ray here. :class:`actors.workers.TrainerActor` wraps
:class:`Trainer` so each (model, seed) trains in its own Ray actor, and a
notebook user can drive the same class directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from actors.datasets import DatasetConfig, build_dataset
from actors.models import LayerTaps, create_model

EVAL_BATCH_SIZE = 512
LOSSES = ("softmax_ce", "squared_error")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings (SGD with momentum, cosine schedule after linear warm-up)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    loss: str = "softmax_ce"


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``/``cuda`` force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was asked for but CUDA is not available; use 'auto' or 'cpu'"
        )
    return torch.device(name)


class Trainer:
    """One (arch, dataset, seed) run: trains on superclasses, extracts layer outputs.

    Parameters
    ----------
    arch : str
        A name from :func:`actors.models.list_models`.
    dataset : DatasetConfig
    training : TrainingConfig
    seed : int
        Seeds weight init and batch order; the same seed gives the same model.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    threads : int, optional
        torch intra-op threads (a Ray actor sets its CPU share).
    """

    def __init__(
        self,
        arch: str,
        dataset: DatasetConfig,
        training: TrainingConfig,
        seed: int,
        *,
        device: str = "auto",
        threads: int | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        self.data = build_dataset(dataset)
        self.training = training
        self.seed = seed
        torch.manual_seed(seed)
        self.model = create_model(
            arch,
            in_channels=self.data.input_shape[0],
            num_classes=self.data.hierarchy.n_superclasses,
        ).to(self.device)
        self.epoch = 0
        self.train_seconds = 0.0
        self._generator = torch.Generator().manual_seed(seed)
        self._optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
        self._x = torch.from_numpy(self.data.images["train"])
        self._y = torch.from_numpy(self.data.superclass("train"))
        self._steps_per_epoch = math.ceil(len(self._x) / training.batch_size)

    @property
    def probe_layers(self) -> tuple[str, ...]:
        return tuple(self.model.probe_layers)

    def train_to(self, epoch: int) -> int:
        """Train until ``epoch`` epochs are done; returns the epoch reached."""
        start = time.perf_counter()
        self.model.train()
        while self.epoch < epoch:
            order = torch.randperm(len(self._x), generator=self._generator)
            for step, batch in enumerate(order.split(self.training.batch_size)):
                self._set_lr(self.epoch * self._steps_per_epoch + step)
                x, y = self._x[batch].to(self.device), self._y[batch].to(self.device)
                loss = self._loss(self.model(x), y)
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
            self.epoch += 1
        self.train_seconds += time.perf_counter() - start
        return self.epoch

    @torch.no_grad()
    def accuracy(self, split: str) -> float:
        """Superclass accuracy on ``split``."""
        self.model.eval()
        x = torch.from_numpy(self.data.images[split])
        y = self.data.superclass(split)
        predictions = [
            self.model(chunk.to(self.device)).argmax(1).cpu().numpy()
            for chunk in x.split(EVAL_BATCH_SIZE)
        ]
        return float((np.concatenate(predictions) == y).mean())

    @torch.no_grad()
    def iter_layer_chunks(
        self, split: str, layers: tuple[str, ...], rows_per_chunk: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(sample_index, {layer: float32 (rows, d)})`` chunks of ``split``.

        Only one chunk of activations is held in memory at a time.
        """
        self.model.eval()
        images = self.data.images[split]
        for start in range(0, len(images), rows_per_chunk):
            stop = min(start + rows_per_chunk, len(images))
            outputs: dict[str, list[np.ndarray]] = {name: [] for name in layers}
            # hooks live for one chunk, so none stay attached while the generator waits
            with LayerTaps(self.model, layers) as taps:
                for lo in range(start, stop, EVAL_BATCH_SIZE):
                    batch = images[lo : min(lo + EVAL_BATCH_SIZE, stop)]
                    self.model(torch.from_numpy(batch).to(self.device))
                    for name in layers:
                        outputs[name].append(taps.outputs[name].cpu().numpy())
            yield np.arange(start, stop), {n: np.concatenate(v) for n, v in outputs.items()}

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.training.loss == "squared_error":
            return F.mse_loss(logits, F.one_hot(y, logits.shape[1]).float())
        return F.cross_entropy(logits, y)

    def _set_lr(self, step: int) -> None:
        warmup = self.training.warmup_epochs * self._steps_per_epoch
        total = self.training.epochs * self._steps_per_epoch
        if step < warmup:
            scale = (step + 1) / warmup
        else:
            scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        for group in self._optimizer.param_groups:
            group["lr"] = self.training.lr * scale
