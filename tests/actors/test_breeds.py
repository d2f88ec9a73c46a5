"""BREEDS hierarchies: the four standard datasets, checked against published BREEDS output.

Published facts used here:
- MadryLab/BREEDS-Benchmarks, "Constructing BREEDS datasets.ipynb" (commit f83be50):
  nodes per level of the modified hierarchy, and the output of
  ``make_living17(info_dir, split="rand")`` (superclass names and, per superclass,
  2 source + 2 target ImageNet class numbers; ``split="rand"`` draws the same
  ``rng.choice`` as ``split=None`` and halves it, so source + target is the order
  our construction returns).
- Third-party code that hard-codes the output of ``make_entity13(split=None)`` and
  the ``label_map`` of ``make_nonliving26``; the entity-13 class numbers below are
  those subclasses, written as ImageNet class numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from actors.datasets.breeds import (
    BREEDS_DATASETS,
    SHIPPED_INFO_DIR,
    BreedsRecipe,
    breeds_superclasses,
    load_breeds_info,
    superclasses_from_recipe,
)

SHARED_INFO_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "breeds"

EXPECTED_COUNTS = {"entity13": 13, "entity30": 30, "living17": 17, "nonliving26": 26}

LIVING17_NAMES = [
    "salamander", "turtle", "lizard", "snake", "spider", "grouse", "parrot", "crab", "dog",
    "wolf", "fox", "domestic cat", "bear", "beetle", "butterfly", "ape", "monkey",
]  # fmt: skip

# make_living17 in the BREEDS notebook: source then target class numbers per superclass.
LIVING17_CLASS_NUMBERS = [
    [27, 29, 26, 28], [37, 34, 33, 35], [41, 44, 47, 38], [60, 57, 65, 61],
    [76, 72, 74, 77], [81, 83, 82, 80], [88, 90, 87, 89], [118, 120, 119, 121],
    [163, 154, 257, 157], [272, 271, 270, 269], [280, 279, 277, 278], [282, 285, 283, 284],
    [297, 295, 296, 294], [305, 306, 302, 303], [325, 321, 324, 322], [368, 365, 366, 367],
    [377, 380, 381, 379],
]  # fmt: skip

NONLIVING26_FULL_NAMES = [
    "bag", "ball", "boat",
    "body armor, body armour, suit of armor, suit of armour, coat of mail, cataphract",
    "bottle",
    "bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, "
    "passenger vehicle",
    "car, auto, automobile, machine, motorcar", "chair", "coat", "digital computer",
    "dwelling, home, domicile, abode, habitation, dwelling house", "fence, fencing",
    "hat, chapeau, lid", "keyboard instrument",
    "mercantile establishment, retail store, sales outlet, outlet", "outbuilding",
    "percussion instrument, percussive instrument", "pot", "roof", "ship", "skirt",
    "stringed instrument", "timepiece, timekeeper, horologe", "truck, motortruck",
    "wind instrument, wind", "squash",
]  # fmt: skip

ENTITY13_NAMES = [
    "garment", "bird", "reptile", "arthropod", "mammal", "accessory", "craft", "equipment",
    "furniture", "instrument", "man-made structure", "wheeled vehicle", "produce",
]  # fmt: skip

ENTITY13_GARMENT = [
    869, 399, 578, 735, 652, 610, 501, 445, 655, 842, 617, 459, 601, 474, 697, 400, 411, 529,
    841, 775,
]  # fmt: skip
ENTITY13_PRODUCE = [
    937, 987, 950, 943, 940, 942, 941, 938, 945, 952, 957, 947, 949, 951, 936, 948, 989, 998,
    954, 944,
]  # fmt: skip


@pytest.fixture(scope="module")
def info():
    return load_breeds_info()


@pytest.mark.parametrize("name", sorted(BREEDS_DATASETS))
def test_each_dataset_has_its_superclasses_of_n_distinct_imagenet_leaves(info, name):
    superclasses = breeds_superclasses(name, info)
    recipe = BREEDS_DATASETS[name]
    assert len(superclasses) == EXPECTED_COUNTS[name]
    assert [s.wnid for s in superclasses] == sorted(s.wnid for s in superclasses)
    seen: set[str] = set()
    for superclass in superclasses:
        assert len(superclass.subclasses) == recipe.n_subclasses
        assert set(superclass.subclasses) <= set(info.leaves_below[superclass.wnid])
        assert all(0 <= info.class_numbers[w] < 1000 for w in superclass.subclasses)
        assert seen.isdisjoint(superclass.subclasses)
        seen.update(superclass.subclasses)
        assert info.levels[superclass.wnid] == recipe.level


def test_levels_match_the_published_nodes_per_level(info):
    per_level: dict[int, int] = {}
    for depth in info.levels.values():
        per_level[depth] = per_level.get(depth, 0) + 1
    assert per_level == {0: 1, 1: 2, 2: 10, 3: 29, 4: 128, 5: 466, 6: 591, 7: 98, 8: 3}


def test_living17_matches_the_published_breeds_notebook(info):
    superclasses = breeds_superclasses("living17", info)
    assert [s.name for s in superclasses] == LIVING17_NAMES
    numbers = [[info.class_numbers[w] for w in s.subclasses] for s in superclasses]
    assert numbers == LIVING17_CLASS_NUMBERS


def test_nonliving26_names_match_the_published_label_map(info):
    superclasses = breeds_superclasses("nonliving26", info)
    assert [info.node_names[s.wnid] for s in superclasses] == NONLIVING26_FULL_NAMES
    assert superclasses[3].name == "body armor"


def test_entity13_names_and_subclasses_match_published_output(info):
    superclasses = breeds_superclasses("entity13", info)
    assert [s.name for s in superclasses] == ENTITY13_NAMES
    assert superclasses[0].wnid == "dummy32"  # dummy nodes are superclasses like any other
    assert [info.class_numbers[w] for w in superclasses[0].subclasses] == ENTITY13_GARMENT
    assert [info.class_numbers[w] for w in superclasses[-1].subclasses] == ENTITY13_PRODUCE


def test_entity30_spot_checks(info):
    names = [s.name for s in breeds_superclasses("entity30", info)]
    assert names[:3] == ["serpentes", "passerine", "saurian"]
    assert {"carnivore", "primate", "musical instrument", "fruit"} <= set(names)


def test_construction_is_deterministic_and_parsing_is_cached(tmp_path):
    assert load_breeds_info() is load_breeds_info(SHIPPED_INFO_DIR)
    copy = tmp_path / "breeds"
    shutil.copytree(SHIPPED_INFO_DIR, copy)
    fresh = load_breeds_info(copy)
    assert fresh is not load_breeds_info()
    for name in BREEDS_DATASETS:
        assert breeds_superclasses(name) == breeds_superclasses(name, fresh)


@pytest.mark.skipif(not SHARED_INFO_DIR.is_dir(), reason="../shared/data/breeds is absent")
def test_shipped_copy_equals_the_shared_data():
    for file_name in ("dataset_class_info.json", "class_hierarchy.txt", "node_names.txt"):
        shipped = (SHIPPED_INFO_DIR / file_name).read_bytes()
        assert shipped == (SHARED_INFO_DIR / file_name).read_bytes()
    assert load_breeds_info(SHARED_INFO_DIR) == load_breeds_info()


def test_missing_folder_or_file_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_breeds_info(tmp_path / "nowhere")
    shutil.copytree(SHIPPED_INFO_DIR, tmp_path / "partial")
    (tmp_path / "partial" / "node_names.txt").unlink()
    with pytest.raises(ValueError, match="has no node_names.txt; pass a folder holding"):
        load_breeds_info(tmp_path / "partial")


def test_malformed_hierarchy_line_names_the_file_and_line(tmp_path):
    shutil.copytree(SHIPPED_INFO_DIR, tmp_path / "bad")
    with open(tmp_path / "bad" / "class_hierarchy.txt", "a") as f:
        f.write("n00001740\n")
    with pytest.raises(ValueError, match=r"class_hierarchy.txt line 1328 reads 'n00001740'"):
        load_breeds_info(tmp_path / "bad")


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="use one of entity13, entity30, living17, nonliving26"):
        breeds_superclasses("living-17")


def _write_tiny(folder: Path) -> None:
    """root -> a -> {dummy1 -> {x, y}, z}; root -> b -> dummy1 (diamond); root -> c (no leaf)."""
    folder.mkdir()
    (folder / "dataset_class_info.json").write_text(
        '[[0, "x", "ex"], [1, "y", "why"], [2, "z", "zed"], [3, "w", "lonely"]]'
    )
    edges = ["n00001740 a", "n00001740 b", "n00001740 c", "a dummy1", "a z", "b b2",
             "b2 dummy1", "dummy1 x", "dummy1 y", "c c1"]  # fmt: skip
    (folder / "class_hierarchy.txt").write_text("\n".join(edges) + "\n")
    names = ["n00001740\tentity", "a\talpha, first", "b\tbeta", "b2\tbeta two",
             "c\tgamma", "c1\tgamma one", "dummy1\tpair"]  # fmt: skip
    (folder / "node_names.txt").write_text("\n".join(names) + "\n")


def test_tiny_hierarchy_by_hand(tmp_path):
    _write_tiny(tmp_path / "tiny")
    tiny = load_breeds_info(tmp_path / "tiny")
    # c has no leaf below it, and w is in no edge: both pruned.
    assert "c" not in tiny.levels and "w" not in tiny.levels
    # dummy1 is reached at depth 2 (via a) and 3 (via b, b2): the longest path counts.
    assert tiny.levels == {"n00001740": 0, "a": 1, "b": 1, "b2": 2, "z": 2, "dummy1": 3,
                           "x": 4, "y": 4}  # fmt: skip
    assert tiny.leaves_below["a"] == ("x", "y", "z")
    assert tiny.nodes_at_level(1) == ["a", "b"]
    assert tiny.nodes_at_level(2, ancestor="b") == ["b2"]
    level1 = superclasses_from_recipe(BreedsRecipe(level=1, ancestor=None, n_subclasses=3), tiny)
    assert [(s.wnid, s.name) for s in level1] == [("a", "alpha")]
    assert sorted(level1[0].subclasses) == ["x", "y", "z"]
    with pytest.raises(ValueError, match="ancestor 'c' is not a node"):
        tiny.nodes_at_level(1, ancestor="c")


def test_recipe_rejects_bad_values():
    with pytest.raises(ValueError, match="n_subclasses=0 should be >= 1"):
        BreedsRecipe(level=3, ancestor=None, n_subclasses=0)
