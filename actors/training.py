"""Train a model on superclass labels (or take given weights) and extract its probed layers.

The two-view losses (``vicreg``, ``simclr``: no labels; ``supcon``) train the
backbone and a projector on two augmented views of each image (:mod:`actors.ssl`);
the classification head then stays untrained, so a run's "accuracy" is the
nearest-class-centre accuracy of the superclasses on the head's input (the
penultimate features), class centres from the training split.

Pure torch: no Ray here. :class:`actors.workers.TrainerActor` wraps
:class:`Trainer` so each (model, seed) trains in its own Ray actor, and a
notebook user can drive the same class directly.

On CUDA the forward passes run under bf16 autocast, the model and the images
are channels_last, batches come from pinned memory and are copied
asynchronously; on the CPU everything is float32 and, with the same thread
count, deterministic: a run resumed from a checkpoint ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from actors.checkpoints import CheckpointStore
from actors.datasets import DatasetConfig, batches, build_dataset, image_loader
from actors.datasets.transforms import augment_batch
from actors.losses import (
    DEFAULT_COSINE_TEMPERATURE,
    DEFAULT_LABEL_SMOOTHING,
    LOSSES,
    add_head_dropout,
    loss_function,
    set_batchnorm_momentum,
    use_cosine_head,
)
from actors.models import FeatureReader, ModelConfig, check_layers, load_weights
from actors.optim import ModelEma, build_optimizer, cosine_warmup_scale
from actors.ssl import (
    TWO_VIEW_LOSSES,
    SslConfig,
    TwoViewModel,
    TwoViews,
    batched_view,
    penultimate_features,
    penultimate_head,
    two_view_loss,
    view_transform,
)
from storage.memory import return_large_buffers_to_the_os

EVAL_BATCH_SIZE = 512
__all__ = ["EVAL_BATCH_SIZE", "LOSSES", "Trainer", "TrainingConfig", "select_device"]


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings: SGD or AdamW, cosine schedule after linear warm-up.

    ``epochs = 0`` trains nothing: the model is probed as created (from its
    weights file, if any). ``ema_decay`` keeps an EMA of the weights, which is
    then what gets extracted. ``checkpoint_every`` epochs (0: never) the state
    is saved; ``keep_checkpoints`` newest ones are kept (plus the probe epochs').
    ``ssl`` sets up the two-view losses (projector, weights, augmentations).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    loss: str = "softmax_ce"
    optimizer: str = "sgd"
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    cosine_temperature: float = DEFAULT_COSINE_TEMPERATURE
    dropout: float = 0.0
    augment: bool = False  # random crops and flips of each training batch
    ema_decay: float | None = None
    bn_momentum: float | None = None
    eval_batch_size: int = EVAL_BATCH_SIZE
    checkpoint_every: int = 1
    keep_checkpoints: int = 1
    ssl: SslConfig = SslConfig()

    def __post_init__(self):
        if isinstance(self.ssl, dict):
            object.__setattr__(self, "ssl", SslConfig(**self.ssl))

    @property
    def two_view(self) -> bool:
        return self.loss in TWO_VIEW_LOSSES


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``/``cuda`` force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was asked for but CUDA is not available; use 'auto' or 'cpu'"
        )
    return torch.device(name)


def build_model(
    config: ModelConfig,
    training: TrainingConfig,
    *,
    shape: tuple[int, int, int],
    num_classes: int,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The model a run trains: created, its head set up for the loss, its weights loaded.

    ``device="meta"`` builds it without memory (weights are then checked, not loaded).
    """
    channels, height, _ = shape
    entry = config.entry
    model = config.create(
        in_channels=entry.in_channels or channels,
        num_classes=num_classes,
        image_size=height,
        device="meta" if str(device) == "meta" else None,
    )
    if training.loss == "cosine_softmax":
        use_cosine_head(model, config.name, training.cosine_temperature)
    if training.two_view:
        penultimate_head(model, config.name, training.loss)
    if config.weights:
        load_weights(model, config)
    if training.dropout > 0:
        add_head_dropout(model, config.name, training.dropout)
    if training.bn_momentum is not None:
        set_batchnorm_momentum(model, training.bn_momentum)
    return model if str(device) == "meta" else model.to(device)


class Trainer:
    """One (arch, dataset, seed) run: trains on superclasses, extracts layer outputs.

    Images stream through DataLoaders (:func:`actors.datasets.image_loader`):
    no split is held in memory beyond the batches in flight.

    Parameters
    ----------
    arch : str or ModelConfig
        A name from :func:`actors.models.list_models`, or a full model config
        (weights file, layers, readout).
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
    checkpoints : CheckpointStore, optional
        Where the state is saved after each epoch and resumed from.
    distributed : (int, int)
        ``(rank, world size)`` of a data-parallel (DDP) process: the process
        group must be set up already (Ray Train does it; see
        :mod:`actors.distributed`). Each process trains on its shard with
        ``batch_size / world`` images a step, gradients are averaged, and rank
        0 writes the checkpoints (with every rank's RNG state).
    """

    def __init__(
        self,
        arch: str | ModelConfig,
        dataset: DatasetConfig,
        training: TrainingConfig,
        seed: int,
        *,
        device: str = "auto",
        threads: int | None = None,
        loader_workers: int = 0,
        checkpoints: CheckpointStore | None = None,
        distributed: tuple[int, int] = (0, 1),
    ):
        if threads:
            torch.set_num_threads(threads)
        return_large_buffers_to_the_os()
        self.device = select_device(device)
        self.config = ModelConfig(arch) if isinstance(arch, str) else arch
        self.data = build_dataset(dataset)
        self.training = training
        self.seed = seed
        self.loader_workers = loader_workers
        self.checkpoints = checkpoints
        self.rank, self.world = distributed
        shape = self.data.input_shape()
        torch.manual_seed(seed)
        self.model = build_model(
            self.config,
            training,
            shape=shape,
            num_classes=self.data.hierarchy.n_superclasses,
            device=self.device,
        )
        self.layers = check_layers(self.config, self.model)
        # torchvision models take RGB: grey images are repeated to 3 channels
        wanted = self.config.entry.in_channels
        self._repeat = wanted if wanted and wanted != shape[0] else None
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            torch.backends.cudnn.benchmark = True
            self.model = self.model.to(memory_format=torch.channels_last)
        self._train_model = self.model
        self._two_view = None
        if training.two_view:  # backbone + projector; the head gets no gradient
            self._two_view = TwoViewModel(
                self.model, self.config.name, training.loss, training.ssl.projector
            ).to(self.device)
            self._train_model = self._two_view
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self._cuda and self.device.index is not None else None
            self._train_model = DistributedDataParallel(
                self._train_model, device_ids=ids, find_unused_parameters=training.two_view
            )
        self._batch_size = training.batch_size // self.world
        self.epoch = 0
        self.train_seconds = 0.0
        self._generator = torch.Generator().manual_seed(seed)
        self._optimizer = build_optimizer(
            self.model if self._two_view is None else self._two_view,
            training.optimizer,
            lr=training.lr,
            momentum=training.momentum,
            nesterov=training.nesterov,
            weight_decay=training.weight_decay,
            betas=training.betas,
        )
        self._ema = (
            ModelEma(self.model, training.ema_decay)
            if training.ema_decay and training.epochs > 0
            else None
        )
        self._loss = None
        if not training.two_view:
            self._loss = loss_function(training.loss, label_smoothing=training.label_smoothing)
        self._superclass_of = torch.as_tensor(self.data.hierarchy.superclass_of)
        self._steps_per_epoch = math.ceil(
            self.data.num_samples(self.data.train_split) // self.world / self._batch_size
        )
        self._accuracy: dict[tuple[int, str], float] = {}  # (epoch, split) -> superclass acc.
        self._ncc_centres: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # two-view losses
        self._readers: dict[tuple[int, tuple[str, ...]], FeatureReader] = {}

    @property
    def probe_layers(self) -> tuple[str, ...]:
        return self.layers

    @property
    def extraction_model(self) -> nn.Module:
        """What is extracted and evaluated: the EMA of the weights if kept, else the model."""
        return self._ema.module if self._ema is not None else self.model

    def _loader(self, split: str, *, train: bool, batch_size: int):
        transform = None
        if train and self.training.two_view and not self.data.in_memory:
            size = self.data.input_shape()[1]
            transform = TwoViews(view_transform(size, self.training.ssl))
        return image_loader(
            self.data,
            split,
            train=train,
            batch_size=batch_size,
            workers=self.loader_workers,
            generator=self._generator if train else None,
            pin_memory=self._cuda,
            shard=(self.rank, self.world) if train else (0, 1),
            transform=transform,
        )

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self._repeat:
            x = x.expand(-1, self._repeat, -1, -1)
        if self._cuda:
            return x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return x.to(self.device)

    def _autocast(self):
        if self._cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_to(self, epoch: int) -> int:
        """Train until ``epoch`` epochs are done; returns the epoch reached.

        With checkpoints, training first jumps to the newest saved epoch at or
        below ``epoch`` (a resumed run), then saves after every epoch.
        """
        if self.checkpoints is not None and self.epoch < epoch:
            state = self.checkpoints.load_newest(after=self.epoch, upto=epoch)
            if state is not None:
                self.load_state_dict(state)
        self.model.train()
        subclass = torch.from_numpy(self.data.subclass(self.data.train_split))
        while self.epoch < epoch:
            start = time.perf_counter()
            loader = self._loader(self.data.train_split, train=True, batch_size=self._batch_size)
            for step, (x, positions) in enumerate(batches(loader)):
                self._set_lr(self.epoch * self._steps_per_epoch + step)
                y = self._superclass_of[subclass[positions]].to(self.device, non_blocking=True)
                if self.training.augment:
                    x = augment_batch(x, self._generator)
                with self._autocast():
                    loss = self._batch_loss(x, y)
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
                if self._ema is not None:
                    self._ema.update(self.model)
            self.epoch += 1
            self.train_seconds += time.perf_counter() - start
            self._save_checkpoint()
        return self.epoch

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._loss is not None:
            return self._loss(self._train_model(self._to_device(x)), y)
        first, second = self.views(x)
        z = self._train_model(self._to_device(torch.cat([first, second])))
        z_a, z_b = z.chunk(2)
        return two_view_loss(self.training.loss, z_a, z_b, y, self.training.ssl)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of a training batch: made by the loader's workers (B, 2, C, H, W)
        for file datasets, drawn here from the loader's generator for in-memory ones."""
        if x.ndim == 5:
            return x[:, 0], x[:, 1]
        config = self.training.ssl
        return batched_view(x, self._generator, config), batched_view(x, self._generator, config)

    def _save_checkpoint(self) -> None:
        every = self.training.checkpoint_every
        if self.checkpoints is None or every <= 0:
            return
        due = self.epoch % every == 0 or self.epoch == self.training.epochs
        if due or self.epoch in self.checkpoints.keep_epochs:
            state = self.state_dict()  # every rank: it gathers their RNG states
            if self.rank == 0:
                self.checkpoints.save(self.epoch, state)

    def state_dict(self) -> dict:
        """Everything the next epoch depends on: weights, optimiser, EMA, schedule, RNGs.

        In a data-parallel run every rank must call it (the RNG states are gathered).
        """
        rng = {
            "torch": torch.get_rng_state(),
            "loader": self._generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if self._cuda else [],
        }
        ranks = [rng]
        if self.world > 1:
            import torch.distributed as dist

            ranks = [None] * self.world
            dist.all_gather_object(ranks, rng)
        return {
            "epoch": self.epoch,
            "arch": self.config.name,
            "model": self.model.state_dict(),
            "projector": None if self._two_view is None else self._two_view.projector.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "ema": None if self._ema is None else self._ema.state_dict(),
            "schedule": {
                "step": self.epoch * self._steps_per_epoch,
                "steps_per_epoch": self._steps_per_epoch,
            },
            "rng": rng,
            "rng_ranks": ranks,
            "world": self.world,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict` (a checkpoint)."""
        self.model.load_state_dict(state["model"])
        if self._two_view is not None:
            self._two_view.projector.load_state_dict(state["projector"])
        self._optimizer.load_state_dict(state["optimizer"])
        if self._ema is not None and state.get("ema") is not None:
            self._ema.load_state_dict(state["ema"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        rng = ranks[self.rank] if len(ranks) == self.world else state["rng"]
        torch.set_rng_state(rng["torch"])
        self._generator.set_state(rng["loader"])
        if self._cuda and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.epoch = int(state["epoch"])
        self.train_seconds = float(state["train_seconds"])

    @torch.no_grad()
    def accuracy(self, split: str) -> float:
        """Superclass accuracy on ``split`` (remembered from an extraction at this epoch).

        With a two-view loss the head is untrained: this is the nearest-class-centre
        accuracy of the superclasses on the penultimate features instead.
        """
        split = self.data.resolve_split(split)
        if self.training.two_view:
            return self.ncc_accuracy(split)
        if (self.epoch, split) not in self._accuracy:
            for _ in self.iter_layer_chunks(split, (), self.training.eval_batch_size):
                pass
        return self._accuracy[(self.epoch, split)]

    def _reader(self, layers: tuple[str, ...]) -> FeatureReader:
        model = self.extraction_model
        key = (id(model), layers)
        if key not in self._readers:
            self._readers[key] = self.config.reader(model, layers)
        return self._readers[key]

    @torch.no_grad()
    def iter_layer_chunks(
        self, split: str, layers: tuple[str, ...], rows_per_chunk: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(positions, {layer: float32 (rows, d)})`` chunks of ``split``, in order.

        Chunks hold at most ``rows_per_chunk`` rows when it is below the
        evaluation batch size or a multiple of it.

        ``positions`` index the split's arrays (``data.sample_index(split)[positions]``
        is what the rows are stored under). Only one chunk of activations is held
        at a time; the superclass accuracy of the pass is remembered.
        """
        model = self.extraction_model
        model.eval()
        split = self.data.resolve_split(split)
        superclass = self.data.superclass(split)
        correct = seen = 0
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        held: list[np.ndarray] = []
        reader = self._reader(tuple(layers))
        batch_size = min(self.training.eval_batch_size, rows_per_chunk)
        for x, positions in batches(self._loader(split, train=False, batch_size=batch_size)):
            with self._autocast():
                logits, features = reader(self._to_device(x))
            for name in layers:
                outputs[name].append(features[name].cpu().numpy())
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
        if not self.training.two_view:
            self._accuracy[(self.epoch, split)] = correct / max(1, seen)

    def _penultimate_batches(self, split: str):
        """(float32 (B, d) penultimate features, superclass (B,)) batches of ``split``."""
        model = self.extraction_model
        model.eval()
        superclass = torch.from_numpy(self.data.superclass(split))
        batch_size = self.training.eval_batch_size
        for x, positions in batches(self._loader(split, train=False, batch_size=batch_size)):
            with self._autocast():
                features = penultimate_features(model, self._to_device(x))
            yield features.float().cpu(), superclass[positions]

    @torch.no_grad()
    def ncc_accuracy(self, split: str) -> float:
        """Nearest-class-centre superclass accuracy of the penultimate features on ``split``.

        Class centres are the training split's means; one batch is held at a time.
        """
        split = self.data.resolve_split(split)
        if (self.epoch, split) in self._accuracy:
            return self._accuracy[(self.epoch, split)]
        if self.epoch not in self._ncc_centres:
            n = self.data.hierarchy.n_superclasses
            sums, counts = None, torch.zeros(n, dtype=torch.float64)
            for features, labels in self._penultimate_batches(self.data.train_split):
                if sums is None:
                    sums = torch.zeros(n, features.shape[1], dtype=torch.float64)
                sums.index_add_(0, labels, features.double())
                counts += torch.bincount(labels, minlength=n).double()
            present = counts > 0
            centres = (sums[present] / counts[present, None]).float()
            self._ncc_centres[self.epoch] = (torch.nonzero(present).flatten(), centres)
        classes, centres = self._ncc_centres[self.epoch]
        correct = seen = 0
        for features, labels in self._penultimate_batches(split):
            nearest = torch.cdist(features, centres).argmin(dim=1)
            correct += int((classes[nearest] == labels).sum())
            seen += len(labels)
        self._accuracy[(self.epoch, split)] = correct / max(1, seen)
        return self._accuracy[(self.epoch, split)]

    def _set_lr(self, step: int) -> None:
        scale = cosine_warmup_scale(
            step,
            warmup_steps=self.training.warmup_epochs * self._steps_per_epoch,
            total_steps=self.training.epochs * self._steps_per_epoch,
        )
        for group in self._optimizer.param_groups:
            group["lr"] = self.training.lr * scale
