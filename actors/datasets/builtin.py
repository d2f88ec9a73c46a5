"""The built-in offline datasets: small, generated or shipped, held in memory.

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, grey). Hierarchy
  ``coarse`` puts digit y in superclass y mod 5 (the "Coarse CIFAR-10"
  construction of Yang et al.); ``shuffled`` permutes the digits first, which is
  their "Random Coarse" construction, also named ``random-coarse``.
- ``shapes``: procedurally drawn 32x32 RGB images. Superclass = shape family
  (circle, square, triangle, cross, bar); subclass = how the shape is filled
  (solid, outline, striped, checkered). In the ``natural`` hierarchy the
  subclasses of a superclass share their shape, so they look alike; in the
  ``shuffled`` one each subclass goes to a random superclass, keeping four
  subclasses per superclass.

Both are small by construction (under 3 MB of pixels), so they are the one
place where a split's images are one array; they go through the same
``torch_dataset`` interface as the file-backed datasets, without augmentation
(the images are already at their working size).
"""

from __future__ import annotations

import io

import numpy as np
import torch

from actors.datasets.base import (
    DatasetConfig,
    DatasetError,
    HierarchicalDataset,
    Hierarchy,
    register_dataset,
)


class ArrayImages(torch.utils.data.Dataset):
    """Images of an in-memory float32 (n, C, H, W) array, one or a batch at a time.

    Item i -> (image (C, H, W), i); a list of indices -> (images (B, C, H, W),
    indices (B,)), gathered in one indexing operation (a view for a run of
    consecutive indices), which is how :func:`actors.datasets.image_loader`
    reads in-memory datasets.
    """

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if isinstance(index, int):
            return self.images[index], index
        index = torch.as_tensor(index)
        if len(index) and bool((index.diff() == 1).all()):
            return self.images[int(index[0]) : int(index[-1]) + 1], index
        return self.images[index], index


class ArrayThumbnails(torch.utils.data.Dataset):
    """Item i -> PNG bytes of image i of a float32 (n, C, H, W) array in [0, 1]."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> bytes:
        from PIL import Image

        array = (np.clip(self.images[i], 0, 1) * 255).astype(np.uint8)
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
        picture = Image.fromarray(array)
        if picture.width < 32:
            picture = picture.resize((32, 32), Image.NEAREST)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()


class InMemoryDataset(HierarchicalDataset):
    """A small dataset whose splits are float32 (n, C, H, W) arrays in [0, 1]."""

    def __init__(self, config, hierarchy, images: dict[str, np.ndarray], subclass):
        super().__init__(
            config,
            hierarchy,
            subclass,
            in_channels=images["train"].shape[1],
            in_memory=True,
        )
        self.images = images

    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.images["train"].shape[1:])

    def torch_dataset(self, split: str, *, train: bool, transform=None) -> ArrayImages:
        if transform is not None:
            raise ValueError(
                "in-memory datasets take no per-sample transform; augment their batches "
                "instead (actors.ssl.batched_view)"
            )
        return ArrayImages(self.images[self.resolve_split(split)])

    def thumbnail_dataset(self, split: str) -> ArrayThumbnails:
        return ArrayThumbnails(self.images[self.resolve_split(split)])


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
DIGITS_OPTIONS = ("test_fraction", "split_seed", "thumbnails")


def digits_hierarchy(config: DatasetConfig) -> Hierarchy:
    """Digit y in superclass y mod 5 (``coarse``), or the digits shuffled first
    (``shuffled``, or ``random-coarse`` as Yang et al. and CIFAR-10 name it)."""
    hierarchy = Hierarchy(
        name="coarse",
        superclass_of=tuple(d % DIGITS_SUPERCLASSES for d in range(10)),
        subclass_names=tuple(str(d) for d in range(10)),
        superclass_names=tuple(
            "{" + ",".join(str(d) for d in range(10) if d % DIGITS_SUPERCLASSES == s) + "}"
            for s in range(DIGITS_SUPERCLASSES)
        ),
    )
    if config.hierarchy in ("shuffled", "random-coarse"):
        hierarchy = hierarchy.shuffled(config.hierarchy_seed, name=config.hierarchy)
    return hierarchy


@register_dataset(
    "digits",
    hierarchies=("coarse", "shuffled", "random-coarse"),
    hierarchy=digits_hierarchy,
    options=DIGITS_OPTIONS,
)
def build_digits(config: DatasetConfig) -> InMemoryDataset:
    """scikit-learn digits; options: ``test_fraction`` (default 0.3), ``split_seed`` (0)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    is_test = _stratified_split(
        labels, config.options.get("test_fraction", 0.3), config.options.get("split_seed", 0)
    )
    return InMemoryDataset(
        config,
        digits_hierarchy(config),
        images={"train": images[~is_test], "test": images[is_test]},
        subclass={"train": labels[~is_test], "test": labels[is_test]},
    )


# -- shapes -------------------------------------------------------------------
SHAPE_FAMILIES = ("circle", "square", "triangle", "cross", "bar")
FILL_STYLES = ("solid", "outline", "striped", "checkered")
SHAPES_DEFAULTS = {"image_size": 32, "train_per_subclass": 120, "test_per_subclass": 40, "seed": 0}


def shapes_hierarchy(config: DatasetConfig) -> Hierarchy:
    """Superclass = shape family (``natural``), or fill styles shuffled across families."""
    n_fill = len(FILL_STYLES)
    hierarchy = Hierarchy(
        name="natural",
        superclass_of=tuple(s // n_fill for s in range(len(SHAPE_FAMILIES) * n_fill)),
        subclass_names=tuple(f"{f}/{s}" for f in SHAPE_FAMILIES for s in FILL_STYLES),
        superclass_names=SHAPE_FAMILIES,
    )
    if config.hierarchy == "shuffled":
        hierarchy = hierarchy.shuffled(config.hierarchy_seed)
    return hierarchy


@register_dataset(
    "shapes",
    hierarchies=("natural", "shuffled"),
    hierarchy=shapes_hierarchy,
    options=(*SHAPES_DEFAULTS, "thumbnails"),
)
def build_shapes(config: DatasetConfig) -> InMemoryDataset:
    """Procedural shapes; options: ``image_size``, ``train_per_subclass``,
    ``test_per_subclass``, ``seed`` (defaults in ``SHAPES_DEFAULTS``)."""
    opts = {**SHAPES_DEFAULTS, **config.options}
    for name in SHAPES_DEFAULTS:
        if not isinstance(opts[name], int) or opts[name] < (0 if name == "seed" else 1):
            raise DatasetError(
                f"shapes option {name}={opts[name]!r} should be a positive integer; fix it"
            )
    hierarchy = shapes_hierarchy(config)
    rng = np.random.RandomState(opts["seed"])
    images, subclass = {}, {}
    for split in ("train", "test"):
        per = opts[f"{split}_per_subclass"]
        labels = np.repeat(np.arange(hierarchy.n_subclasses), per)
        images[split] = np.stack([_draw_shape(int(s), opts["image_size"], rng) for s in labels])
        subclass[split] = labels.astype(np.int64)
    return InMemoryDataset(config, hierarchy, images, subclass)


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
