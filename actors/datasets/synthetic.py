"""Write small generated datasets in the real on-disk formats.

For tests, benchmarks and trying stratalens without the real data: an
ImageNet-layout tree of JPEGs, an ImageFolder tree of PNGs with its hierarchy
file, and CIFAR-10/100 python pickles with the keys and dtypes of the real
files. Each class gets its own colour and texture frequency, so a model can
learn the classes from a few images.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg, encode_png


def class_image(class_id: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """uint8 (3, size, size): a class-specific colour and stripe frequency, plus noise."""
    colour = np.array([(class_id * 67) % 255, (class_id * 131) % 255, (class_id * 29) % 255])
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((xx + yy) * (1 + class_id % 5) * np.pi / size)
    image = colour[:, None, None] * (0.6 + 0.4 * stripes[None]) + rng.normal(0, 12, (3, size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_tree(
    root: str | Path,
    classes: list[str],
    per_class: dict[str, int],
    *,
    size: int = 16,
    suffix: str = ".JPEG",
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<class>_<i><suffix>`` images; ``per_class[split]`` per class."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    for split, count in per_class.items():
        for class_id, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = torch.from_numpy(class_image(class_id, size, rng))
                data = encode_png(pixels) if suffix.lower() == ".png" else encode_jpeg(pixels)
                (folder / f"{name}_{i:05d}{suffix}").write_bytes(data.numpy().tobytes())
    return root


def write_imagefolder(
    root: str | Path,
    hierarchy: dict[str, list[str]],
    per_class: dict[str, int],
    *,
    size: int = 16,
    extra_classes: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A PNG ImageFolder tree and its hierarchy file (JSON); returns (root, hierarchy_file).

    ``extra_classes`` get folders too but stay out of the hierarchy.
    """
    classes = sorted({c for members in hierarchy.values() for c in members} | set(extra_classes))
    write_image_tree(root, classes, per_class, size=size, suffix=".png")
    hierarchy_file = Path(root) / "hierarchy.json"
    hierarchy_file.write_text(json.dumps(hierarchy))
    return Path(root), hierarchy_file


def write_cifar(root: str | Path, name: str, n_train: int, n_test: int, *, seed: int = 0) -> Path:
    """A ``cifar-10-batches-py`` or ``cifar-100-python`` folder under ``root``; returns root.

    CIFAR-10 training samples are spread over ``data_batch_1`` .. ``data_batch_5``.
    """
    from actors.datasets.cifar import CIFAR100_SUPERCLASSES, FILES, FOLDERS, class_names

    rng = np.random.RandomState(seed)
    names = class_names(name)
    folder = Path(root) / FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = {c: s for s, (_, members) in enumerate(CIFAR100_SUPERCLASSES) for c in members}
    for split, n in (("train", n_train), ("test", n_test)):
        files = FILES[name][split]
        labels = np.arange(n) % len(names)
        for part, index in zip(files, np.array_split(np.arange(n), len(files)), strict=True):
            data = np.stack([class_image(int(labels[i]), 32, rng).reshape(-1) for i in index])
            batch = {
                b"batch_label": f"{split} batch".encode(),
                b"filenames": [f"img_{i}.png".encode() for i in index],
                b"data": data.astype(np.uint8),
            }
            if name == "cifar10":
                batch[b"labels"] = [int(labels[i]) for i in index]
            else:
                batch[b"fine_labels"] = [int(labels[i]) for i in index]
                batch[b"coarse_labels"] = [coarse_of[names[labels[i]]] for i in index]
            with open(folder / part, "wb") as f:
                pickle.dump(batch, f)
    meta = (
        {b"label_names": [c.encode() for c in names], b"num_cases_per_batch": 10000}
        if name == "cifar10"
        else {
            b"fine_label_names": [c.encode() for c in names],
            b"coarse_label_names": [s.encode() for s, _ in CIFAR100_SUPERCLASSES],
        }
    )
    with open(folder / ("batches.meta" if name == "cifar10" else "meta"), "wb") as f:
        pickle.dump(meta, f)
    return Path(root)
