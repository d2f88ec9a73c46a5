"""DataLoaders over a dataset's splits: shuffled for training, in order for extraction.

File-backed datasets decode in worker processes (``workers``, set from the spec's
resources); in-memory ones (digits, shapes) load in the calling process, where
worker processes would only cost. Only ``prefetch`` batches per worker are in
flight, so memory does not grow with the size of a split.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from actors.datasets.base import HierarchicalDataset
from actors.datasets.transforms import CorruptImageError

PREFETCH_BATCHES = 2  # per worker process
THUMBNAIL_BATCH = 256


class Shuffled(Sampler[int]):
    """A fresh permutation of ``range(n)`` from ``generator`` at every pass.

    One ``randperm`` per epoch, so a seed gives the same batches however the
    images are loaded (``RandomSampler`` draws a second, empty permutation per epoch).
    With ``shard=(rank, world)`` (data-parallel training) every process draws the
    same permutation, cut to a multiple of ``world``, and keeps every
    ``world``-th index from ``rank``: equal, disjoint shards.
    """

    def __init__(self, n: int, generator: torch.Generator | None, shard: tuple[int, int] = (0, 1)):
        self.n, self.generator = n, generator
        self.rank, self.world = shard

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator)
        if self.world > 1:
            order = order[: len(self) * self.world][self.rank :: self.world]
        return iter(order.tolist())


def loader_workers(data: HierarchicalDataset, workers: int) -> int:
    """Worker processes a loader of ``data`` uses: none for in-memory datasets."""
    return 0 if data.in_memory else max(0, int(workers))


def image_loader(
    data: HierarchicalDataset,
    split: str,
    *,
    train: bool,
    batch_size: int,
    workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    shard: tuple[int, int] = (0, 1),
    transform=None,
) -> DataLoader:
    """Batches ``(images float32 (B, C, H, W), positions int64 (B,))`` of ``split``.

    ``train=True`` shuffles with ``generator`` and applies the training transforms;
    otherwise samples come in order with the evaluation transforms. ``positions``
    index the split's arrays (``data.subclass(split)[positions]``). ``shard``
    ``(rank, world)`` gives a training process its share (see :class:`Shuffled`).
    ``transform`` replaces a file-backed dataset's own, in the workers (e.g.
    :class:`actors.ssl.TwoViews`: images then come as (B, 2, C, H, W)).
    """
    if transform is None:
        dataset = data.torch_dataset(split, train=train)
    else:
        dataset = data.torch_dataset(split, train=train, transform=transform)
    order = Shuffled(len(dataset), generator, shard) if train else range(len(dataset))
    if data.in_memory:  # one indexing operation per batch, in this process
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, False), batch_size=None)
    n_workers = loader_workers(data, workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=n_workers,
        prefetch_factor=PREFETCH_BATCHES if n_workers else None,
        pin_memory=pin_memory,
    )


def thumbnail_loader(data: HierarchicalDataset, split: str, *, workers: int = 0) -> DataLoader:
    """Lists of PNG bytes, in sample order, made in the loader's worker processes."""
    n_workers = loader_workers(data, workers)
    return DataLoader(
        data.thumbnail_dataset(split),
        batch_size=THUMBNAIL_BATCH,
        num_workers=n_workers,
        prefetch_factor=PREFETCH_BATCHES if n_workers else None,
        collate_fn=list,
    )


def batches(loader: Iterable) -> Iterator:
    """Iterate ``loader``; a corrupt image raised in a worker keeps its one-sentence message."""
    with warnings.catch_warnings():
        # Workers are forked here. Lance warns at every fork once it is loaded, but the
        # workers only read image files and never touch Lance's runtime.
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        iterator = iter(loader)
    try:
        yield from iterator
    except CorruptImageError as exc:
        message = str(exc)
        if "Original Traceback" in message:  # re-raised by torch from a worker process
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split("CorruptImageError: ", 1)[-1]
        raise CorruptImageError(message) from None
