import numpy as np
import pytest

from actors.datasets import DatasetConfig, build_dataset, list_datasets


def test_registry_lists_builtin_datasets():
    assert list_datasets() == {"digits": ("coarse", "shuffled"), "shapes": ("natural", "shuffled")}


def test_digits_coarse_is_digit_mod_5():
    data = build_dataset(DatasetConfig("digits", "coarse"))
    for split in ("train", "test"):
        np.testing.assert_array_equal(data.superclass(split), data.subclass[split] % 5)
    assert data.images["train"].shape[1:] == (1, 8, 8)
    assert len(data.subclass["train"]) + len(data.subclass["test"]) == 1797
    assert 0.0 <= data.images["test"].min() and data.images["test"].max() <= 1.0


@pytest.mark.parametrize("name, hierarchy", [("digits", "shuffled"), ("shapes", "shuffled")])
def test_shuffled_keeps_subclass_count_per_superclass(name, hierarchy):
    natural = build_dataset(DatasetConfig(name, "coarse" if name == "digits" else "natural"))
    shuffled = build_dataset(DatasetConfig(name, hierarchy, hierarchy_seed=3))
    np.testing.assert_array_equal(
        np.sort(natural.hierarchy.subclasses_per_superclass()),
        np.sort(shuffled.hierarchy.subclasses_per_superclass()),
    )
    assert natural.hierarchy.superclass_of != shuffled.hierarchy.superclass_of
    np.testing.assert_array_equal(natural.images["test"], shuffled.images["test"])


def test_shapes_natural_groups_fill_styles_of_one_family():
    data = build_dataset(
        DatasetConfig(
            "shapes", "natural", options={"train_per_subclass": 2, "test_per_subclass": 2}
        )
    )
    h = data.hierarchy
    for sub, sup in enumerate(h.superclass_of):
        assert h.subclass_names[sub].split("/")[0] == h.superclass_names[sup]
    assert data.images["train"].shape == (40, 3, 32, 32)


def test_shapes_are_deterministic_and_seeded():
    opts = {"train_per_subclass": 3, "test_per_subclass": 1}
    a = build_dataset(DatasetConfig("shapes", "natural", options=opts))
    b = build_dataset(DatasetConfig("shapes", "natural", options=opts))
    c = build_dataset(DatasetConfig("shapes", "natural", options={**opts, "seed": 1}))
    np.testing.assert_array_equal(a.images["train"], b.images["train"])
    assert not np.allclose(a.images["train"], c.images["train"])
    assert a.dataset_id == b.dataset_id != c.dataset_id


def test_thumbnails_are_png():
    data = build_dataset(DatasetConfig("digits", "coarse"))
    thumbs = data.thumbnails("test")
    assert len(thumbs) == len(data.subclass["test"])
    assert thumbs[0][:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "config, message",
    [
        (DatasetConfig("cifar", "coarse"), "unknown dataset 'cifar'"),
        (DatasetConfig("shapes", "coarse"), "no hierarchy 'coarse'"),
        (DatasetConfig("shapes", "natural", options={"size": 3}), "unknown shapes option"),
    ],
)
def test_bad_dataset_config(config, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(config)
