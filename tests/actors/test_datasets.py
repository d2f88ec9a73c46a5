import numpy as np
import pytest
import torch

from actors.datasets import (
    DatasetConfig,
    DatasetError,
    build_dataset,
    build_hierarchy,
    image_loader,
    list_datasets,
)


def test_registry_lists_every_source():
    known = list_datasets()
    assert known["digits"] == ("coarse", "shuffled", "random-coarse")
    assert known["shapes"] == ("natural", "shuffled")
    assert set(known) == {"digits", "shapes", "imagefolder", "imagenet", "cifar10", "cifar100"}
    assert "breeds-living17-shuffled" in known["imagenet"] and "none" in known["imagenet"]


def test_digits_coarse_is_digit_mod_5():
    data = build_dataset(DatasetConfig("digits", "coarse"))
    for split in ("train", "test"):
        np.testing.assert_array_equal(data.superclass(split), data.subclass(split) % 5)
    assert data.splits == ("train", "test") and data.in_channels == 1 and data.in_memory
    assert data.num_samples("train") + data.num_samples("heldout") == 1797
    images = data.torch_dataset("test", train=False)
    x, i = images[5]
    assert x.shape == (1, 8, 8) and i == 5 and 0.0 <= x.min() and x.max() <= 1.0


def test_digits_random_coarse_is_yang_et_als_shuffle_then_mod_5():
    """Random Coarse (Yang et al., App. F): the shuffled hierarchy under its paper's name."""
    random_coarse = build_hierarchy(DatasetConfig("digits", "random-coarse", hierarchy_seed=4))
    shuffled = build_hierarchy(DatasetConfig("digits", "shuffled", hierarchy_seed=4))
    assert random_coarse.name == "random-coarse"
    assert random_coarse.superclass_of == shuffled.superclass_of
    assert (
        random_coarse.superclass_of
        != build_hierarchy(DatasetConfig("digits", "coarse")).superclass_of
    )
    np.testing.assert_array_equal(random_coarse.subclasses_per_superclass(), [2] * 5)


@pytest.mark.parametrize(
    "name, hierarchy",
    [("digits", "shuffled"), ("digits", "random-coarse"), ("shapes", "shuffled")],
)
def test_shuffled_keeps_subclass_count_per_superclass(name, hierarchy):
    natural = build_dataset(DatasetConfig(name, "coarse" if name == "digits" else "natural"))
    shuffled = build_dataset(DatasetConfig(name, hierarchy, hierarchy_seed=3))
    np.testing.assert_array_equal(
        np.sort(natural.hierarchy.subclasses_per_superclass()),
        np.sort(shuffled.hierarchy.subclasses_per_superclass()),
    )
    assert natural.hierarchy.superclass_of != shuffled.hierarchy.superclass_of
    np.testing.assert_array_equal(natural.subclass("test"), shuffled.subclass("test"))
    np.testing.assert_array_equal(natural.images["test"], shuffled.images["test"])


def test_shapes_natural_groups_fill_styles_of_one_family():
    options = {"train_per_subclass": 2, "test_per_subclass": 2}
    data = build_dataset(DatasetConfig("shapes", "natural", options=options))
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
    thumbs = data.thumbnail_dataset("test")
    assert len(thumbs) == data.num_samples("test")
    assert thumbs[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_training_loader_shuffles_with_its_generator_and_covers_the_split():
    data = build_dataset(DatasetConfig("digits", "coarse"))

    def orders(seed, epochs=3):
        generator = torch.Generator().manual_seed(seed)
        loader = image_loader(data, "train", train=True, batch_size=100, generator=generator)
        return [torch.cat([p for _, p in loader]).numpy() for _ in range(epochs)]

    a, b, c = orders(0), orders(0), orders(1)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(np.sort(a[2]), np.arange(data.num_samples("train")))
    # the order the trainer drew before loaders existed: one randperm per epoch
    generator = torch.Generator().manual_seed(0)
    for epoch in a:
        np.testing.assert_array_equal(epoch, torch.randperm(len(epoch), generator=generator))


def test_hierarchy_json_lists_superclasses_in_construction_order():
    h = build_hierarchy(DatasetConfig("digits", "coarse")).to_json()
    assert h == {
        "superclasses": [
            {"name": "{" + f"{s},{s + 5}" + "}", "wnid": None, "subclasses": [str(s), str(s + 5)]}
            for s in range(5)
        ]
    }


@pytest.mark.parametrize(
    "config, message",
    [
        (DatasetConfig("cifar", "coarse"), "unknown dataset 'cifar'"),
        (DatasetConfig("shapes", "coarse"), "no hierarchy 'coarse'"),
        (DatasetConfig("shapes", "natural", options={"size": 3}), "unknown shapes option"),
        (DatasetConfig("shapes", "natural", options={"image_size": "x"}), "image_size='x'"),
        (DatasetConfig("digits", "coarse", options={"thumbnails": "some"}), "thumbnails='some'"),
        (DatasetConfig("imagenet", "breeds-living17"), "needs options.root"),
        (DatasetConfig("cifar10", "coarse", options={"root": "/nonexistent"}), "does not exist"),
    ],
)
def test_bad_dataset_config(config, message):
    with pytest.raises(DatasetError, match=message):
        build_dataset(config).thumbnail_splits()
