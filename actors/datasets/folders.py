"""Datasets read from image files in class folders: ``imagefolder`` (and ImageNet's layout).

A tree ``ROOT/<split>/<class>/<image>`` is indexed once, without opening any
image: per split, the relative path and subclass of every file of the classes
the hierarchy keeps, and its ``sample_index``, the position of the file in
``torchvision.datasets.ImageFolder(ROOT/<split>)`` order (classes sorted,
files sorted, the classes the hierarchy leaves out counted too), so
``ImageFolder(ROOT/split).samples[sample_index]`` is the stored row's file.
Paths are kept as one NumPy bytes array per split (about 40 bytes a file), so
DataLoader worker processes share them without copying.

Images are read and decoded one at a time by the loader's workers. A file that
cannot be decoded stops the run with its path (:class:`CorruptImageError`):
skipping it would store a different sample set per layer or epoch, and
re-running after replacing the file resumes where the run stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torchvision.datasets.folder import IMG_EXTENSIONS

from actors.datasets.base import (
    DatasetConfig,
    DatasetError,
    HierarchicalDataset,
    Hierarchy,
    hierarchy_from_groups,
    register_dataset,
    require_option,
)
from actors.datasets.transforms import decode_file, image_transform, thumbnail_png

DEFAULT_IMAGE_SIZE = 224
HELDOUT_FOLDERS = ("val", "test")  # the first one present is the held-out split
FILE_OPTIONS = ("root", "image_size", "thumbnails", "subclasses_per_superclass")


@dataclass(frozen=True)
class SplitIndex:
    """The files of one split that the hierarchy keeps, in ImageFolder order.

    Attributes
    ----------
    paths : ndarray of bytes
        (n,) paths relative to the dataset root, UTF-8.
    subclass : ndarray of int64
        (n,) subclass of each file (its class's position in the hierarchy).
    sample_index : ndarray of int64
        (n,) position of each file in ``ImageFolder(root / split)``.
    """

    paths: np.ndarray
    subclass: np.ndarray
    sample_index: np.ndarray


def _image_files(class_dir: str) -> list[str]:
    """The image files under ``class_dir`` in ImageFolder's order (sorted walk, sorted names)."""
    files = []
    for dirpath, _, names in sorted(os.walk(class_dir, followlinks=True)):
        for name in sorted(names):
            if name.lower().endswith(IMG_EXTENSIONS):
                files.append(os.path.join(dirpath, name))
    return files


def index_split(root: Path, split: str, classes: tuple[str, ...]) -> SplitIndex:
    """Index ``root/split`` for the class folders ``classes`` (subclass i = classes[i])."""
    split_dir = root / split
    present = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    missing = sorted(set(classes) - set(present))
    if missing:
        raise DatasetError(
            f"class folder {split_dir / missing[0]} is missing ({len(missing)} of the "
            f"hierarchy's {len(classes)} classes are absent from {split_dir}); "
            "fix the hierarchy or the dataset root"
        )
    wanted = {name: i for i, name in enumerate(classes)}
    paths, subclass, sample_index = [], [], []
    position = 0
    for name in present:
        files = _image_files(str(split_dir / name))
        if name in wanted:
            if not files:
                raise DatasetError(
                    f"class folder {split_dir / name} holds no image file "
                    f"({', '.join(IMG_EXTENSIONS)}); add its images or drop the class"
                )
            relative = [os.path.relpath(f, root) for f in files]
            paths.append(np.array([p.encode() for p in relative], dtype=bytes))
            subclass.append(np.full(len(files), wanted[name], dtype=np.int64))
            sample_index.append(np.arange(position, position + len(files), dtype=np.int64))
        position += len(files)
    # classes are visited in ImageFolder order, so the rows already are
    return SplitIndex(np.concatenate(paths), np.concatenate(subclass), np.concatenate(sample_index))


class FileImages(torch.utils.data.Dataset):
    """Item i -> (transformed image float32 (3, s, s), i), decoded from its file."""

    def __init__(self, root: str, paths: np.ndarray, transform):
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = decode_file(os.path.join(self.root, self.paths[i].decode()))
        return self.transform(image), i


class FileThumbnails(torch.utils.data.Dataset):
    """Item i -> PNG thumbnail bytes of file i."""

    def __init__(self, root: str, paths: np.ndarray):
        self.root, self.paths = root, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        return thumbnail_png(decode_file(os.path.join(self.root, self.paths[i].decode())))


class FolderDataset(HierarchicalDataset):
    """Images in ``root/<split>/<class folder>/``, the class folders being ``hierarchy.ids``."""

    def __init__(self, config: DatasetConfig, hierarchy: Hierarchy, root: Path, splits, size):
        self.root = root
        self.image_size = size
        self.index = {split: index_split(root, split, hierarchy.ids) for split in splits}
        super().__init__(
            config, hierarchy, {s: i.subclass for s, i in self.index.items()}, splits=splits
        )

    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def sample_index(self, split: str) -> np.ndarray:
        return self.index[self.resolve_split(split)].sample_index

    def paths(self, split: str) -> np.ndarray:
        return self.index[self.resolve_split(split)].paths

    def torch_dataset(self, split: str, *, train: bool, transform=None) -> FileImages:
        transform = transform or image_transform(self.image_size, train=train)
        return FileImages(str(self.root), self.paths(split), transform)

    def thumbnail_dataset(self, split: str) -> FileThumbnails:
        return FileThumbnails(str(self.root), self.paths(split))


def dataset_root(config: DatasetConfig, expected: str) -> Path:
    """``options.root`` as an existing folder, or one sentence saying what is wrong."""
    root = Path(require_option(config, "root", f"the folder holding {expected}")).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset root {root} does not exist or is not a folder; set options.root to "
            f"the folder holding {expected}"
        )
    return root


def folder_splits(root: Path) -> tuple[str, str]:
    """``("train", held-out)`` from the split folders present under ``root``."""
    heldout = next((s for s in HELDOUT_FOLDERS if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or heldout is None:
        raise DatasetError(
            f"{root} should hold the split folders train/ and val/ (or test/), each with one "
            "folder per class; point options.root at such a folder"
        )
    return ("train", heldout)


def image_size(config: DatasetConfig, default: int = DEFAULT_IMAGE_SIZE) -> int:
    size = config.options.get("image_size", default)
    if not isinstance(size, int) or size < 8:
        raise DatasetError(f"options.image_size={size!r} should be an integer >= 8; fix it")
    return size


def cut_hierarchy(hierarchy: Hierarchy, config: DatasetConfig) -> Hierarchy:
    """Keep the first ``options.subclasses_per_superclass`` subclasses of each superclass."""
    n = config.options.get("subclasses_per_superclass")
    if n is None:
        return hierarchy
    if not isinstance(n, int) or n < 1:
        raise DatasetError(f"options.subclasses_per_superclass={n!r} should be an integer >= 1")
    groups = []
    for s in range(hierarchy.n_superclasses):
        members = hierarchy.members(s)
        if len(members) < n:
            raise DatasetError(
                f"superclass {hierarchy.superclass_names[s]!r} has {len(members)} subclasses, "
                f"fewer than subclasses_per_superclass={n}; lower it"
            )
        groups.append(
            (
                hierarchy.superclass_names[s],
                (hierarchy.superclass_ids or (None,) * hierarchy.n_superclasses)[s],
                [(hierarchy.ids[c], hierarchy.subclass_names[c]) for c in members[:n]],
            )
        )
    return hierarchy_from_groups(hierarchy.name, groups)


# -- imagefolder ------------------------------------------------------------------
def read_hierarchy_file(path: str | Path) -> list[tuple[str, list[str]]]:
    """``[(superclass, [class folder, ...])]`` from a JSON or YAML mapping, in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"hierarchy file {path} does not exist; set options.hierarchy_file to a JSON or "
            "YAML file mapping each superclass to its class folders"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"hierarchy file {path} is not valid JSON/YAML ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DatasetError(
            f"hierarchy file {path} should map each superclass name to a list of class "
            f"folder names, got {type(data).__name__}"
        )
    owner: dict[str, str] = {}
    groups = []
    for superclass, classes in data.items():
        if not isinstance(classes, list) or not classes:
            raise DatasetError(
                f"superclass {superclass!r} in {path} should list its class folders, "
                f"got {classes!r}"
            )
        for name in classes:
            name = str(name)
            if name in owner:
                where = (
                    "twice in it" if owner[name] == str(superclass) else f"in {owner[name]!r} too"
                )
                raise DatasetError(
                    f"class {name!r} of superclass {superclass!r} in {path} is listed {where}; "
                    "list every class once"
                )
            owner[name] = str(superclass)
        groups.append((str(superclass), [str(c) for c in classes]))
    return groups


def imagefolder_hierarchy(config: DatasetConfig) -> Hierarchy:
    """The file's hierarchy (``natural``) or its subclasses shuffled (``shuffled``)."""
    path = require_option(
        config, "hierarchy_file", "a JSON/YAML file mapping superclasses to class folders"
    )
    groups = [(sup, None, [(c, c) for c in classes]) for sup, classes in read_hierarchy_file(path)]
    hierarchy = cut_hierarchy(hierarchy_from_groups("natural", groups), config)
    if config.hierarchy == "shuffled":
        hierarchy = hierarchy.shuffled(config.hierarchy_seed)
    return hierarchy


@register_dataset(
    "imagefolder",
    hierarchies=("natural", "shuffled"),
    hierarchy=imagefolder_hierarchy,
    options=(*FILE_OPTIONS, "hierarchy_file"),
)
def build_imagefolder(config: DatasetConfig) -> FolderDataset:
    """Any ``root/<split>/<class>/<image>`` tree with a hierarchy file.

    Options: ``root``, ``hierarchy_file`` (required), ``image_size`` (224),
    ``thumbnails`` (heldout | all | none), ``subclasses_per_superclass``.
    """
    hierarchy = imagefolder_hierarchy(config)
    root = dataset_root(config, "train/ and val/ (or test/) class folders")
    return FolderDataset(config, hierarchy, root, folder_splits(root), image_size(config))
