"""CIFAR-10 and CIFAR-100 from the standard python pickle folders.

``options.root`` is ``cifar-10-batches-py`` / ``cifar-100-python`` or the folder
holding it. A split is one uint8 array (50,000 x 3 x 32 x 32 = 147 MiB for
train), small by construction, as torchvision holds it too; images are
transformed one at a time in the loader's workers, which share the array.

Hierarchies, after Yang et al. ("Are neurons actually collapsed?"):

- CIFAR-10 ``coarse``: class y in superclass y mod C' (``options.coarse_classes``,
  default 5); ``random-coarse``: the classes shuffled first (``hierarchy_seed``);
- ``fine``: each class is a superclass whose samples are split in two
  subclasses at random (subclass y + C * Bernoulli(1/2), seeded);
- CIFAR-100 ``superclass``: the official 20 superclasses (``shuffled``: their
  subclasses moved at random); ``mod20``: y mod 20; ``random-coarse``: mod 20
  after shuffling; ``fine`` as above.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from actors.datasets.base import (
    DatasetConfig,
    DatasetError,
    HierarchicalDataset,
    Hierarchy,
    register_dataset,
)
from actors.datasets.folders import dataset_root, image_size
from actors.datasets.transforms import image_transform, thumbnail_png

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The official superclasses in their label order, each with its classes.
CIFAR100_SUPERCLASSES = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    ("fruit_and_vegetables", ("apple", "mushroom", "orange", "pear", "sweet_pepper")),
    ("household_electrical_devices", ("clock", "keyboard", "lamp", "telephone", "television")),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    ("large_man-made_outdoor_things", ("bridge", "castle", "house", "road", "skyscraper")),
    ("large_natural_outdoor_scenes", ("cloud", "forest", "mountain", "plain", "sea")),
    ("large_omnivores_and_herbivores", ("camel", "cattle", "chimpanzee", "elephant", "kangaroo")),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    ("non-insect_invertebrates", ("crab", "lobster", "snail", "spider", "worm")),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    ("trees", ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree")),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)
# Fine labels number the classes alphabetically, as in the files' meta.
CIFAR100_CLASSES = tuple(sorted(c for _, members in CIFAR100_SUPERCLASSES for c in members))

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}
DEFAULT_COARSE = {"cifar10": 5, "cifar100": 20}
OPTIONS = ("root", "image_size", "thumbnails", "coarse_classes")


def class_names(name: str) -> tuple[str, ...]:
    return CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES


def _modulo(names: tuple[str, ...], n_super: int, hierarchy_name: str) -> Hierarchy:
    """Class y in superclass y mod ``n_super``."""
    return Hierarchy(
        name=hierarchy_name,
        superclass_of=tuple(y % n_super for y in range(len(names))),
        subclass_names=names,
        superclass_names=tuple("{" + ",".join(names[s::n_super]) + "}" for s in range(n_super)),
    )


def _fine(names: tuple[str, ...]) -> Hierarchy:
    """Superclass = class y; subclasses y (first half) and y + C (second half)."""
    halves = [f"{c}/a" for c in names] + [f"{c}/b" for c in names]
    return Hierarchy(
        name="fine",
        superclass_of=tuple(range(len(names))) * 2,
        subclass_names=tuple(halves),
        superclass_names=names,
    )


def _coarse_classes(config: DatasetConfig, n_classes: int) -> int:
    n = config.options.get("coarse_classes", DEFAULT_COARSE[config.name])
    if not isinstance(n, int) or not 2 <= n < n_classes:
        raise DatasetError(
            f"options.coarse_classes={n!r} should be an integer in 2..{n_classes - 1}; fix it"
        )
    return n


def cifar_hierarchy(config: DatasetConfig) -> Hierarchy:
    """The CIFAR hierarchy ``config.hierarchy`` names (no file is read)."""
    names = class_names(config.name)
    h = config.hierarchy
    if h == "fine":
        return _fine(names)
    if h in ("superclass", "shuffled"):
        official = Hierarchy(
            name="superclass",
            superclass_of=tuple(
                next(s for s, (_, m) in enumerate(CIFAR100_SUPERCLASSES) if c in m) for c in names
            ),
            subclass_names=names,
            superclass_names=tuple(s for s, _ in CIFAR100_SUPERCLASSES),
        )
        return official if h == "superclass" else official.shuffled(config.hierarchy_seed)
    n_super = 20 if h == "mod20" else _coarse_classes(config, len(names))
    coarse = _modulo(names, n_super, h)
    if h == "random-coarse":
        return coarse.shuffled(config.hierarchy_seed, name="random-coarse")
    return coarse


def _read_split(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (n, 3, 32, 32) images, int64 (n,) labels and coarse labels (or empty)."""
    images, labels, coarse = [], [], []
    for file_name in FILES[name][split]:
        path = folder / file_name
        if not path.is_file():
            raise DatasetError(
                f"{path} is missing; options.root should be the unpacked {FOLDERS[name]} "
                "folder (or the folder holding it) of the python version of the dataset"
            )
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels.append(np.asarray(batch[LABEL_KEYS[name]], dtype=np.int64))
            coarse.append(np.asarray(batch.get(b"coarse_labels", []), dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path} is not a CIFAR python pickle ({type(exc).__name__}: {exc}); "
                "re-extract the dataset archive"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels[-1]):
            raise DatasetError(
                f"{path} holds data of shape {data.shape} for {len(labels[-1])} labels; "
                "expected (n, 3072) uint8; re-extract the dataset archive"
            )
        images.append(data.reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(coarse)


class CifarImages(torch.utils.data.Dataset):
    """Item i -> (transformed image float32 (3, s, s), i) of a uint8 (n, 3, 32, 32) array."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(torch.from_numpy(self.images[i])), i


class CifarThumbnails(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> bytes:
        return thumbnail_png(torch.from_numpy(self.images[i]))


class CifarDataset(HierarchicalDataset):
    """CIFAR images held as uint8 arrays, transformed per sample in the loader."""

    def __init__(self, config, hierarchy, images, subclass, size: int):
        super().__init__(config, hierarchy, subclass)
        self.images = images
        self.image_size = size

    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def torch_dataset(self, split: str, *, train: bool, transform=None) -> CifarImages:
        transform = transform or image_transform(self.image_size, train=train)
        return CifarImages(self.images[self.resolve_split(split)], transform)

    def thumbnail_dataset(self, split: str) -> CifarThumbnails:
        return CifarThumbnails(self.images[self.resolve_split(split)])


def build_cifar(config: DatasetConfig) -> CifarDataset:
    hierarchy = cifar_hierarchy(config)
    root = dataset_root(config, f"the {FOLDERS[config.name]} folder")
    folder = root / FOLDERS[config.name] if (root / FOLDERS[config.name]).is_dir() else root
    images, subclass = {}, {}
    rng = np.random.RandomState(config.hierarchy_seed)  # the fine halves: train, then test
    n_classes = len(class_names(config.name))
    for split in ("train", "test"):
        images[split], labels, coarse = _read_split(folder, config.name, split)
        if labels.min() < 0 or labels.max() >= n_classes:
            raise DatasetError(
                f"{folder} has labels outside 0..{n_classes - 1}; is it {config.name}?"
            )
        if len(coarse) and config.hierarchy in ("superclass", "shuffled"):
            official = cifar_hierarchy(DatasetConfig(config.name, "superclass"))
            if not np.array_equal(np.asarray(official.superclass_of)[labels], coarse):
                raise DatasetError(
                    f"the coarse labels in {folder} disagree with CIFAR-100's official "
                    "superclasses; re-extract the dataset archive"
                )
        if config.hierarchy == "fine":
            labels = labels + n_classes * rng.randint(0, 2, size=len(labels))
        subclass[split] = labels
    return CifarDataset(config, hierarchy, images, subclass, image_size(config, default=32))


for _name, _hierarchies in (
    ("cifar10", ("coarse", "random-coarse", "fine")),
    ("cifar100", ("superclass", "shuffled", "mod20", "random-coarse", "fine")),
):
    register_dataset(_name, hierarchies=_hierarchies, hierarchy=cifar_hierarchy, options=OPTIONS)(
        build_cifar
    )
