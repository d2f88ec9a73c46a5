"""Train a model on superclass labels and extract its probed layers.

Pure torch: no Ray here. :class:`actors.workers.TrainerActor` wraps
:class:`Trainer` so each (model, seed) trains in its own Ray actor, and a
notebook user can drive the same class directly.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from actors.datasets import DatasetConfig, batches, build_dataset, image_loader
from actors.models import LayerTaps, create_model

EVAL_BATCH_SIZE = 512
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_buffers_to_the_os() -> None:
    """Have glibc map every buffer over ``MMAP_THRESHOLD_BYTES`` on its own (Linux/glibc).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB);
    activation buffers then come from the heap, which keeps growing batch after batch
    while holding freed memory. A fixed threshold returns them at once, so peak RSS
    does not grow with the number of batches (``stratalens bench data``).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except OSError:  # not glibc: nothing to tune
        pass


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

    Images stream through DataLoaders (:func:`actors.datasets.image_loader`):
    no split is held in memory beyond the batches in flight.

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
    loader_workers : int
        DataLoader worker processes that read and decode images (file-backed
        datasets only; in-memory ones load in this process).
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
        loader_workers: int = 0,
    ):
        if threads:
            torch.set_num_threads(threads)
        return_large_buffers_to_the_os()
        self.device = select_device(device)
        self.data = build_dataset(dataset)
        self.training = training
        self.seed = seed
        self.loader_workers = loader_workers
        torch.manual_seed(seed)
        self.model = create_model(
            arch,
            in_channels=self.data.in_channels,
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
        self._superclass_of = torch.as_tensor(self.data.hierarchy.superclass_of)
        self._steps_per_epoch = math.ceil(
            self.data.num_samples(self.data.train_split) / training.batch_size
        )
        self._accuracy: dict[tuple[int, str], float] = {}  # (epoch, split) -> superclass acc.

    @property
    def probe_layers(self) -> tuple[str, ...]:
        return tuple(self.model.probe_layers)

    def _loader(self, split: str, *, train: bool, batch_size: int):
        return image_loader(
            self.data,
            split,
            train=train,
            batch_size=batch_size,
            workers=self.loader_workers,
            generator=self._generator if train else None,
            pin_memory=self.device.type == "cuda",
        )

    def train_to(self, epoch: int) -> int:
        """Train until ``epoch`` epochs are done; returns the epoch reached."""
        start = time.perf_counter()
        self.model.train()
        subclass = torch.from_numpy(self.data.subclass(self.data.train_split))
        while self.epoch < epoch:
            for step, (x, positions) in enumerate(
                batches(
                    self._loader(
                        self.data.train_split, train=True, batch_size=self.training.batch_size
                    )
                )
            ):
                self._set_lr(self.epoch * self._steps_per_epoch + step)
                y = self._superclass_of[subclass[positions]].to(self.device, non_blocking=True)
                loss = self._loss(self.model(x.to(self.device, non_blocking=True)), y)
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
            self.epoch += 1
        self.train_seconds += time.perf_counter() - start
        return self.epoch

    @torch.no_grad()
    def accuracy(self, split: str) -> float:
        """Superclass accuracy on ``split`` (remembered from an extraction at this epoch)."""
        split = self.data.resolve_split(split)
        if (self.epoch, split) not in self._accuracy:
            for _ in self.iter_layer_chunks(split, (), EVAL_BATCH_SIZE):
                pass
        return self._accuracy[(self.epoch, split)]

    @torch.no_grad()
    def iter_layer_chunks(
        self, split: str, layers: tuple[str, ...], rows_per_chunk: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(positions, {layer: float32 (rows, d)})`` chunks of ``split``, in order.

        Chunks hold at most ``rows_per_chunk`` rows when it is below ``EVAL_BATCH_SIZE`` or a
        multiple of it.

        ``positions`` index the split's arrays (``data.sample_index(split)[positions]``
        is what the rows are stored under). Only one chunk of activations is held
        at a time; the superclass accuracy of the pass is remembered.
        """
        self.model.eval()
        split = self.data.resolve_split(split)
        superclass = self.data.superclass(split)
        correct = seen = 0
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        held: list[np.ndarray] = []
        # hooks are removed before each yield, so none stay attached while the caller waits
        taps = LayerTaps(self.model, layers)
        batch_size = min(EVAL_BATCH_SIZE, rows_per_chunk)
        for x, positions in batches(self._loader(split, train=False, batch_size=batch_size)):
            with taps:
                logits = self.model(x.to(self.device, non_blocking=True))
                for name in layers:
                    outputs[name].append(taps.outputs[name].cpu().numpy())
            positions = positions.numpy()
            predicted = logits.argmax(1).cpu().numpy()
            correct += int((predicted == superclass[positions]).sum())
            seen += len(positions)
            held.append(positions)
            if sum(map(len, held)) >= rows_per_chunk:
                yield np.concatenate(held), {n: np.concatenate(v) for n, v in outputs.items()}
                held, outputs = [], {name: [] for name in layers}
        if held:
            yield np.concatenate(held), {n: np.concatenate(v) for n, v in outputs.items()}
        self._accuracy[(self.epoch, split)] = correct / max(1, seen)

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
