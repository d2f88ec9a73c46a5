"""Datasets with a two-level (superclass -> subclass) hierarchy, read lazily.

Models are trained on superclass labels; subclasses are the hidden labels the
probe tries to recover. Every source yields decoded, transformed images one at
a time through a ``torch.utils.data.Dataset``, so nothing holds a whole split:

- ``digits``, ``shapes``: built-in and offline (:mod:`actors.datasets.builtin`);
- ``imagefolder``: any ``ROOT/<split>/<class>/<image>`` tree with a hierarchy
  file (:mod:`actors.datasets.folders`);
- ``imagenet``: ILSVRC-2012 with the BREEDS hierarchies (:mod:`actors.datasets.imagenet`);
- ``cifar10``, ``cifar100``: the python pickle folders (:mod:`actors.datasets.cifar`).

Nothing is downloaded: every source reads local paths given in its options.
"""

from actors.datasets import builtin, cifar, folders, imagenet  # noqa: F401  (registers them)
from actors.datasets.base import (
    DatasetConfig,
    DatasetError,
    HierarchicalDataset,
    Hierarchy,
    build_dataset,
    build_hierarchy,
    list_datasets,
    register_dataset,
)
from actors.datasets.loader import batches, image_loader, loader_workers, thumbnail_loader
from actors.datasets.transforms import CorruptImageError

__all__ = [
    "CorruptImageError",
    "DatasetConfig",
    "DatasetError",
    "HierarchicalDataset",
    "Hierarchy",
    "batches",
    "build_dataset",
    "build_hierarchy",
    "image_loader",
    "list_datasets",
    "loader_workers",
    "register_dataset",
    "thumbnail_loader",
]
