"""ImageNet (ILSVRC-2012) from a local folder, cut into BREEDS superclasses.

The folder has the usual layout, ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG``. Hierarchies:

- ``breeds-entity13``, ``breeds-entity30``, ``breeds-living17``,
  ``breeds-nonliving26``: the BREEDS datasets (:mod:`actors.datasets.breeds`),
  built from the hierarchy files shipped with stratalens or from
  ``options.breeds_info_dir``;
- each with ``-shuffled``: every subclass moved to a random superclass
  (seeded by ``hierarchy_seed``), keeping the number per superclass;
- ``none``: all 1,000 classes, each its own superclass (cluster with
  ``scope: all``).

``options.subclasses_per_superclass`` keeps the first N subclasses of each
superclass in the construction's order, which is BREEDS' own seeded random
choice; the probing paper's entity-13 cut to 4 is
``{hierarchy: breeds-entity13, options: {subclasses_per_superclass: 4}}``.
"""

from __future__ import annotations

from actors.datasets.base import DatasetConfig, Hierarchy, hierarchy_from_groups, register_dataset
from actors.datasets.breeds import BREEDS_DATASETS, breeds_superclasses, load_breeds_info
from actors.datasets.folders import (
    FILE_OPTIONS,
    FolderDataset,
    cut_hierarchy,
    dataset_root,
    image_size,
)

SHUFFLED_SUFFIX = "-shuffled"
IMAGENET_HIERARCHIES = (
    *(f"breeds-{name}" for name in BREEDS_DATASETS),
    *(f"breeds-{name}{SHUFFLED_SUFFIX}" for name in BREEDS_DATASETS),
    "none",
)


def imagenet_hierarchy(config: DatasetConfig) -> Hierarchy:
    """The BREEDS hierarchy ``config.hierarchy`` names (no image is read)."""
    info = load_breeds_info(config.options.get("breeds_info_dir"))
    if config.hierarchy == "none":
        wnids = sorted(info.class_numbers, key=info.class_numbers.get)
        groups = [(_short(info.leaf_names[w]), w, [(w, _short(info.leaf_names[w]))]) for w in wnids]
        return hierarchy_from_groups("none", groups)
    base = config.hierarchy.removeprefix("breeds-").removesuffix(SHUFFLED_SUFFIX)
    groups = [
        (s.name, s.wnid, [(w, _short(info.leaf_names[w])) for w in s.subclasses])
        for s in breeds_superclasses(base, info)
    ]
    hierarchy = cut_hierarchy(hierarchy_from_groups(config.hierarchy, groups), config)
    if config.hierarchy.endswith(SHUFFLED_SUFFIX):
        hierarchy = hierarchy.shuffled(config.hierarchy_seed, name=config.hierarchy)
    return hierarchy


@register_dataset(
    "imagenet",
    hierarchies=IMAGENET_HIERARCHIES,
    hierarchy=imagenet_hierarchy,
    options=(*FILE_OPTIONS, "breeds_info_dir"),
)
def build_imagenet(config: DatasetConfig) -> FolderDataset:
    """ImageNet under ``options.root``; options ``image_size`` (224), ``thumbnails``,
    ``breeds_info_dir``, ``subclasses_per_superclass``."""
    hierarchy = imagenet_hierarchy(config)
    root = dataset_root(config, "ImageNet's train/<wnid>/ and val/<wnid>/ folders")
    return FolderDataset(config, hierarchy, root, ("train", "val"), image_size(config))


def _short(name: str) -> str:
    """``"tench, Tinca tinca"`` -> ``"tench"``."""
    return name.split(",")[0].strip()
