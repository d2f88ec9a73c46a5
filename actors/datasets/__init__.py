"""Built-in offline datasets with a two-level (superclass -> subclass) hierarchy.

Models are trained on superclass labels; subclasses are the hidden labels the
probe tries to recover. Every dataset here is built locally and deterministically,
with nothing downloaded:

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, grey). Hierarchy
  ``coarse`` puts digit y in superclass y mod 5 (the "Coarse CIFAR-10"
  construction of Yang et al.); ``shuffled`` permutes the digits first.
- ``shapes``: procedurally drawn 32x32 RGB images. Superclass = shape family
  (circle, square, triangle, cross, bar); subclass = how the shape is filled
  (solid, outline, striped, checkered). In the ``natural`` hierarchy the
  subclasses of a superclass share their shape, so they look alike; in the
  ``shuffled`` one each subclass goes to a random superclass, keeping four
  subclasses per superclass.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Hierarchy:
    """Maps each subclass to its superclass.

    Attributes
    ----------
    name : str
        ``natural``, ``coarse`` or ``shuffled``.
    superclass_of : tuple of int
        ``superclass_of[subclass]``, one entry per subclass.
    subclass_names, superclass_names : tuple of str
    """

    name: str
    superclass_of: tuple[int, ...]
    subclass_names: tuple[str, ...]
    superclass_names: tuple[str, ...]

    @property
    def n_superclasses(self) -> int:
        return len(self.superclass_names)

    def subclasses_per_superclass(self) -> np.ndarray:
        """Number of subclasses in each superclass, int array (n_superclasses,)."""
        return np.bincount(self.superclass_of, minlength=self.n_superclasses)

    def shuffled(self, seed: int) -> Hierarchy:
        """Each subclass to a random superclass, keeping the count per superclass."""
        rng = np.random.RandomState(seed)
        superclass_of = rng.permutation(np.asarray(self.superclass_of))
        return Hierarchy(
            name="shuffled",
            superclass_of=tuple(int(s) for s in superclass_of),
            subclass_names=self.subclass_names,
            superclass_names=tuple(f"group{i}" for i in range(self.n_superclasses)),
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


@dataclass
class HierarchicalDataset:
    """Images with subclass labels and a hierarchy, split into train and test.

    ``images[split]`` is float32 (n, channels, height, width) in [0, 1];
    ``subclass[split]`` is int64 (n,).
    """

    config: DatasetConfig
    hierarchy: Hierarchy
    images: dict[str, np.ndarray]
    subclass: dict[str, np.ndarray]

    @property
    def dataset_id(self) -> str:
        return self.config.dataset_id

    def superclass(self, split: str) -> np.ndarray:
        return np.asarray(self.hierarchy.superclass_of)[self.subclass[split]]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images["train"].shape[1:])

    def thumbnails(self, split: str) -> list[bytes]:
        """PNG bytes of every image of ``split`` (upscaled to at least 32 px)."""
        from PIL import Image

        out = []
        for image in self.images[split]:
            array = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
            picture = Image.fromarray(array)
            if picture.width < 32:
                picture = picture.resize((32, 32), Image.NEAREST)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out


# -- registry -----------------------------------------------------------------
_BUILDERS: dict[str, Callable[[DatasetConfig], HierarchicalDataset]] = {}
_HIERARCHIES: dict[str, tuple[str, ...]] = {}


def register_dataset(name: str, hierarchies: tuple[str, ...]):
    """Register a builder ``f(config) -> HierarchicalDataset`` under ``name``."""

    def decorator(builder):
        _BUILDERS[name] = builder
        _HIERARCHIES[name] = hierarchies
        return builder

    return decorator


def list_datasets() -> dict[str, tuple[str, ...]]:
    """Registered dataset names and the hierarchies each accepts."""
    return dict(_HIERARCHIES)


def build_dataset(config: DatasetConfig) -> HierarchicalDataset:
    """Build the dataset ``config`` names (deterministic)."""
    if config.name not in _BUILDERS:
        raise ValueError(f"unknown dataset {config.name!r}; choose one of {sorted(_BUILDERS)}")
    if config.hierarchy not in _HIERARCHIES[config.name]:
        raise ValueError(
            f"dataset {config.name!r} has no hierarchy {config.hierarchy!r}; "
            f"choose one of {list(_HIERARCHIES[config.name])}"
        )
    return _BUILDERS[config.name](config)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test samples, the same fraction of every label."""
    rng = np.random.RandomState(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        is_test[members[: int(round(test_fraction * len(members)))]] = True
    return is_test


# -- digits -------------------------------------------------------------------
DIGITS_SUPERCLASSES = 5


@register_dataset("digits", hierarchies=("coarse", "shuffled"))
def build_digits(config: DatasetConfig) -> HierarchicalDataset:
    """scikit-learn digits; options: ``test_fraction`` (default 0.3), ``split_seed`` (0)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    names = tuple(str(d) for d in range(10))
    hierarchy = Hierarchy(
        name="coarse",
        superclass_of=tuple(d % DIGITS_SUPERCLASSES for d in range(10)),
        subclass_names=names,
        superclass_names=tuple(
            "{" + ",".join(str(d) for d in range(10) if d % DIGITS_SUPERCLASSES == s) + "}"
            for s in range(DIGITS_SUPERCLASSES)
        ),
    )
    if config.hierarchy == "shuffled":
        hierarchy = hierarchy.shuffled(config.hierarchy_seed)
    is_test = _stratified_split(
        labels, config.options.get("test_fraction", 0.3), config.options.get("split_seed", 0)
    )
    return HierarchicalDataset(
        config=config,
        hierarchy=hierarchy,
        images={"train": images[~is_test], "test": images[is_test]},
        subclass={"train": labels[~is_test], "test": labels[is_test]},
    )


# -- shapes -------------------------------------------------------------------
SHAPE_FAMILIES = ("circle", "square", "triangle", "cross", "bar")
FILL_STYLES = ("solid", "outline", "striped", "checkered")
SHAPES_DEFAULTS = {"image_size": 32, "train_per_subclass": 120, "test_per_subclass": 40, "seed": 0}


@register_dataset("shapes", hierarchies=("natural", "shuffled"))
def build_shapes(config: DatasetConfig) -> HierarchicalDataset:
    """Procedural shapes; options: ``image_size``, ``train_per_subclass``,
    ``test_per_subclass``, ``seed`` (defaults in ``SHAPES_DEFAULTS``)."""
    unknown = set(config.options) - set(SHAPES_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown shapes option(s) {sorted(unknown)}; valid ones are {sorted(SHAPES_DEFAULTS)}"
        )
    opts = {**SHAPES_DEFAULTS, **config.options}
    n_fill = len(FILL_STYLES)
    hierarchy = Hierarchy(
        name="natural",
        superclass_of=tuple(s // n_fill for s in range(len(SHAPE_FAMILIES) * n_fill)),
        subclass_names=tuple(f"{f}/{s}" for f in SHAPE_FAMILIES for s in FILL_STYLES),
        superclass_names=SHAPE_FAMILIES,
    )
    if config.hierarchy == "shuffled":
        hierarchy = hierarchy.shuffled(config.hierarchy_seed)
    rng = np.random.RandomState(opts["seed"])
    images, subclass = {}, {}
    for split in SPLITS:
        per = opts[f"{split}_per_subclass"]
        labels = np.repeat(np.arange(len(hierarchy.superclass_of)), per)
        images[split] = np.stack([_draw_shape(int(s), opts["image_size"], rng) for s in labels])
        subclass[split] = labels.astype(np.int64)
    return HierarchicalDataset(config, hierarchy, images, subclass)


def _draw_shape(subclass: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """One image (3, size, size): a shape family filled in one style, randomly placed."""
    family, style = (
        SHAPE_FAMILIES[subclass // len(FILL_STYLES)],
        FILL_STYLES[subclass % len(FILL_STYLES)],
    )
    radius = rng.uniform(0.28, 0.4) * size
    centre = size / 2 + rng.uniform(-0.12, 0.12, size=2) * size
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - centre[0], yy - centre[1]
    u = np.cos(angle) * dx + np.sin(angle) * dy  # coordinates in the shape's frame
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    outside = _signed_distance(family, u, v, radius)  # < 0 inside the shape
    inside = outside < 0
    if style == "outline":
        mask = inside & (outside > -max(1.5, 0.18 * radius))
    elif style == "striped":
        mask = inside & (np.sin(2 * np.pi * (u + v) / (0.25 * radius + 2)) > 0)
    elif style == "checkered":
        cell = 0.3 * radius + 1
        mask = inside & ((np.floor(u / cell) + np.floor(v / cell)) % 2 == 0)
    else:
        mask = inside
    colour = _random_colour(rng, brightness=(0.6, 1.0))
    background = _random_colour(rng, brightness=(0.0, 0.35))
    image = np.where(mask[None], colour[:, None, None], background[:, None, None])
    image = image + rng.normal(0, 0.06, size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _signed_distance(family: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance to the shape's edge (negative inside)."""
    if family == "circle":
        return np.hypot(u, v) - r
    if family == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8 * r
    if family == "triangle":
        # equilateral triangle: the largest of three half-plane distances
        normals = [
            (np.cos(a), np.sin(a))
            for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)
        ]
        return np.max([nx * u + ny * v for nx, ny in normals], axis=0) - 0.5 * r
    if family == "cross":
        arm_u = np.maximum(np.abs(u) - r, np.abs(v) - 0.35 * r)
        arm_v = np.maximum(np.abs(v) - r, np.abs(u) - 0.35 * r)
        return np.minimum(arm_u, arm_v)
    if family == "bar":
        return np.maximum(np.abs(u) - r, np.abs(v) - 0.4 * r)
    raise ValueError(f"unknown shape family {family!r}")


def _random_colour(rng: np.random.RandomState, brightness: tuple[float, float]) -> np.ndarray:
    colour = rng.uniform(0.2, 1.0, size=3)
    return (colour / colour.max() * rng.uniform(*brightness)).astype(np.float32)
