"""What every dataset is: a hierarchy, two splits, labels per sample, images on demand.

A dataset never holds its images as one array unless it is small by
construction (the built-in ones). It knows, per split, how many samples there
are, each sample's subclass and its ``sample_index`` in the store, and it hands
out a ``torch.utils.data.Dataset`` that reads, decodes and transforms one image
at a time, so training and extraction stream through a ``DataLoader``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A dataset cannot be read as configured; the message names the path and the fix."""


@dataclass(frozen=True)
class Hierarchy:
    """Maps each subclass to its superclass.

    Attributes
    ----------
    name : str
        The hierarchy's name, e.g. ``natural``, ``coarse``, ``breeds-living17``.
    superclass_of : tuple of int
        ``superclass_of[subclass]``, one entry per subclass.
    subclass_names, superclass_names : tuple of str
        Human-readable names.
    subclass_ids : tuple of str, optional
        What each subclass is read from: a WordNet id for ImageNet, a class
        folder for an image folder; the name where not given.
    superclass_ids : tuple of str or None, optional
        WordNet ids of the superclasses (BREEDS); None where there is none.
    """

    name: str
    superclass_of: tuple[int, ...]
    subclass_names: tuple[str, ...]
    superclass_names: tuple[str, ...]
    subclass_ids: tuple[str, ...] | None = None
    superclass_ids: tuple[str | None, ...] | None = None

    @property
    def n_superclasses(self) -> int:
        return len(self.superclass_names)

    @property
    def n_subclasses(self) -> int:
        return len(self.superclass_of)

    @property
    def ids(self) -> tuple[str, ...]:
        """``subclass_ids``, or the names where there are no ids."""
        return self.subclass_ids or self.subclass_names

    def subclasses_per_superclass(self) -> np.ndarray:
        """Number of subclasses in each superclass, int array (n_superclasses,)."""
        return np.bincount(self.superclass_of, minlength=self.n_superclasses)

    def members(self, superclass: int) -> list[int]:
        """The subclasses of ``superclass``, in subclass order."""
        return [s for s, sup in enumerate(self.superclass_of) if sup == superclass]

    def shuffled(self, seed: int, *, name: str = "shuffled") -> Hierarchy:
        """Each subclass to a random superclass, keeping the count per superclass."""
        rng = np.random.RandomState(seed)
        superclass_of = rng.permutation(np.asarray(self.superclass_of))
        return Hierarchy(
            name=name,
            superclass_of=tuple(int(s) for s in superclass_of),
            subclass_names=self.subclass_names,
            superclass_names=tuple(f"group{i}" for i in range(self.n_superclasses)),
            subclass_ids=self.subclass_ids,
        )

    def to_json(self) -> dict:
        """``{"superclasses": [{"name", "wnid", "subclasses"}]}`` in construction order.

        Subclasses are given by id (WordNet ids for ImageNet, class names elsewhere).
        """
        ids = self.ids
        wnids = self.superclass_ids or (None,) * self.n_superclasses
        return {
            "superclasses": [
                {
                    "name": self.superclass_names[s],
                    "wnid": wnids[s],
                    "subclasses": [ids[c] for c in self.members(s)],
                }
                for s in range(self.n_superclasses)
            ]
        }


def hierarchy_from_groups(
    name: str,
    groups: list[tuple[str, str | None, list[tuple[str, str]]]],
) -> Hierarchy:
    """A hierarchy from ``[(superclass name, superclass id, [(subclass id, name)])]``.

    Subclasses are numbered in the order given, superclass by superclass.
    """
    superclass_of, sub_ids, sub_names = [], [], []
    for index, (_, _, members) in enumerate(groups):
        for sub_id, sub_name in members:
            superclass_of.append(index)
            sub_ids.append(sub_id)
            sub_names.append(sub_name)
    return Hierarchy(
        name=name,
        superclass_of=tuple(superclass_of),
        subclass_names=tuple(sub_names),
        superclass_names=tuple(g[0] for g in groups),
        subclass_ids=tuple(sub_ids),
        superclass_ids=tuple(g[1] for g in groups),
    )


@dataclass(frozen=True)
class DatasetConfig:
    """What to build: a registered dataset name, its hierarchy and its options."""

    name: str
    hierarchy: str
    hierarchy_seed: int = 0
    options: dict = field(default_factory=dict)

    @property
    def dataset_id(self) -> str:
        """Stable id of this exact dataset: name, hierarchy and a hash of the options."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.name}-{self.hierarchy}-{hashlib.sha1(blob).hexdigest()[:8]}"


class HierarchicalDataset:
    """A two-split dataset with subclass labels and a hierarchy over them.

    Subclasses implement :meth:`torch_dataset` (and may override
    :meth:`sample_index`, :meth:`paths` and :meth:`thumbnail_dataset`).

    Parameters
    ----------
    config : DatasetConfig
    hierarchy : Hierarchy
    subclass : dict of str to ndarray
        int64 (n,) per split; entry i is the subclass of the split's i-th sample.
    splits : tuple of str
        ``(training split, held-out split)``, e.g. ``("train", "val")``.
    in_channels : int
    in_memory : bool
        True where the images are one small array already: loaders then run in
        the calling process (worker processes would only cost).
    """

    def __init__(
        self,
        config: DatasetConfig,
        hierarchy: Hierarchy,
        subclass: dict[str, np.ndarray],
        *,
        splits: tuple[str, str] = ("train", "test"),
        in_channels: int = 3,
        in_memory: bool = False,
    ):
        self.config = config
        self.hierarchy = hierarchy
        self._subclass = {s: np.asarray(v, dtype=np.int64) for s, v in subclass.items()}
        self.splits = splits
        self.in_channels = in_channels
        self.in_memory = in_memory
        self._superclass_of = np.asarray(hierarchy.superclass_of, dtype=np.int64)

    @property
    def dataset_id(self) -> str:
        return self.config.dataset_id

    @property
    def train_split(self) -> str:
        return self.splits[0]

    @property
    def heldout_split(self) -> str:
        return self.splits[1]

    def resolve_split(self, split: str) -> str:
        """``train``, ``heldout`` or a split name -> this dataset's split name."""
        if split == "heldout":
            return self.heldout_split
        if split not in self.splits:
            raise DatasetError(
                f"dataset {self.config.name!r} has no split {split!r}; "
                f"use one of {list(self.splits)} or 'heldout'"
            )
        return split

    def num_samples(self, split: str) -> int:
        return len(self._subclass[self.resolve_split(split)])

    def subclass(self, split: str) -> np.ndarray:
        """int64 (n,): subclass of each sample of ``split``."""
        return self._subclass[self.resolve_split(split)]

    def superclass(self, split: str) -> np.ndarray:
        """int64 (n,): superclass of each sample of ``split``."""
        return self._superclass_of[self.subclass(split)]

    def sample_index(self, split: str) -> np.ndarray:
        """int64 (n,): the ``sample_index`` each sample is stored under (default 0..n-1)."""
        return np.arange(self.num_samples(split), dtype=np.int64)

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images a model sees; this default reads one held-out image."""
        image, _ = self.torch_dataset(self.heldout_split, train=False)[0]
        return tuple(int(n) for n in image.shape)

    def paths(self, split: str) -> np.ndarray | None:
        """Each sample's file path relative to the dataset root, or None (no files)."""
        return None

    def torch_dataset(self, split: str, *, train: bool, transform=None):
        """A map-style ``torch.utils.data.Dataset``: item i -> (image float32 (C, H, W), i).

        ``train`` selects the training transforms (augmentation) over the evaluation ones;
        ``transform`` (file-backed datasets only) replaces both: it maps the decoded uint8
        (3, H, W) image to what item i holds (two stacked SSL views, :mod:`actors.ssl`).
        """
        raise NotImplementedError

    def thumbnail_dataset(self, split: str):
        """A map-style dataset: item i -> PNG bytes of the i-th sample, at least 32 px."""
        raise NotImplementedError

    def thumbnail_splits(self) -> tuple[str, ...]:
        """The splits whose samples rows carry thumbnails (``options.thumbnails``)."""
        choice = self.config.options.get("thumbnails", "heldout")
        if choice in ("heldout", "test", "val"):
            return (self.heldout_split,)
        if choice == "all":
            return self.splits
        if choice == "none":
            return ()
        raise DatasetError(
            f"options.thumbnails={choice!r} is not one of 'heldout' (alias 'test'/'val'), "
            "'all' or 'none'; pick one"
        )


# -- registry -----------------------------------------------------------------
@dataclass(frozen=True)
class DatasetEntry:
    """How to build one registered dataset, and its hierarchy without touching images."""

    hierarchies: tuple[str, ...]
    build: Callable[[DatasetConfig], HierarchicalDataset]
    hierarchy: Callable[[DatasetConfig], Hierarchy]
    options: tuple[str, ...]


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    *,
    hierarchies: tuple[str, ...],
    hierarchy: Callable[[DatasetConfig], Hierarchy],
    options: tuple[str, ...],
):
    """Register a builder ``f(config) -> HierarchicalDataset`` under ``name``.

    ``hierarchy(config)`` builds the hierarchy alone (no images read), and
    ``options`` names every option the dataset accepts.
    """

    def decorator(builder):
        _REGISTRY[name] = DatasetEntry(hierarchies, builder, hierarchy, options)
        return builder

    return decorator


def list_datasets() -> dict[str, tuple[str, ...]]:
    """Registered dataset names and the hierarchies each accepts."""
    return {name: entry.hierarchies for name, entry in _REGISTRY.items()}


def _entry(config: DatasetConfig) -> DatasetEntry:
    if config.name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {config.name!r}; choose one of {sorted(_REGISTRY)}")
    entry = _REGISTRY[config.name]
    if config.hierarchy not in entry.hierarchies:
        raise DatasetError(
            f"dataset {config.name!r} has no hierarchy {config.hierarchy!r}; "
            f"choose one of {list(entry.hierarchies)}"
        )
    unknown = sorted(set(config.options) - set(entry.options))
    if unknown:
        raise DatasetError(
            f"unknown {config.name} option(s) {unknown}; valid ones are {sorted(entry.options)}"
        )
    return entry


def build_dataset(config: DatasetConfig) -> HierarchicalDataset:
    """Build the dataset ``config`` names (deterministic; reads labels, not images)."""
    return _entry(config).build(config)


def build_hierarchy(config: DatasetConfig) -> Hierarchy:
    """The hierarchy ``config`` names, without reading any image."""
    return _entry(config).hierarchy(config)


def require_option(config: DatasetConfig, name: str, what: str) -> str:
    """The value of a required option, or one sentence saying how to set it."""
    value = config.options.get(name)
    if not value:
        raise DatasetError(
            f"dataset {config.name!r} needs options.{name}: {what}; add it to the spec's "
            "dataset options"
        )
    return value
