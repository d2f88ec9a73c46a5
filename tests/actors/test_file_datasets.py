"""Sources read from local files, on generated fixtures in the real formats."""

import json
import pickle

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from actors.datasets import (
    CorruptImageError,
    DatasetConfig,
    DatasetError,
    batches,
    build_dataset,
    build_hierarchy,
    image_loader,
    thumbnail_loader,
)
from actors.datasets.synthetic import write_cifar, write_image_tree, write_imagefolder

HIERARCHY = {"animals": ["cat", "dog", "fox"], "vehicles": ["bus", "car"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    # "ant" and "zebra" are class folders the hierarchy leaves out: they shift positions
    return write_imagefolder(
        root, HIERARCHY, {"train": 4, "test": 2}, extra_classes=("ant", "zebra")
    )


@pytest.fixture(scope="module")
def living17(tmp_path_factory):
    """An ImageNet tree with every living-17 wnid, plus one wnid outside BREEDS living-17."""
    wnids = build_hierarchy(DatasetConfig("imagenet", "breeds-living17")).ids
    root = tmp_path_factory.mktemp("imagenet")
    return write_image_tree(root, [*wnids, "n01440764"], {"train": 2, "val": 1}, size=12)


def imagefolder(root, hierarchy_file, hierarchy="natural", **options):
    options = {"root": str(root), "hierarchy_file": str(hierarchy_file), **options}
    return build_dataset(DatasetConfig("imagefolder", hierarchy, options=options))


def test_imagefolder_sample_index_is_the_torchvision_imagefolder_position(folder):
    data = imagefolder(*folder)
    assert data.splits == ("train", "test") and not data.in_memory
    root = folder[0]
    for split in data.splits:
        reference = ImageFolder(str(root / split)).samples
        index, paths = data.sample_index(split), data.paths(split)
        assert len(index) == 5 * (4 if split == "train" else 2)
        for i, path in zip(index, paths, strict=True):
            assert reference[i][0] == str(root / path.decode())
        names = [data.hierarchy.subclass_names[s] for s in data.subclass(split)]
        assert names == [p.decode().split("/")[1] for p in paths]
    assert data.hierarchy.to_json()["superclasses"][1] == {
        "name": "vehicles",
        "wnid": None,
        "subclasses": ["bus", "car"],
    }


def test_loader_decodes_and_transforms_in_worker_processes(folder):
    data = imagefolder(*folder, image_size=16)
    loader = image_loader(data, "test", train=False, batch_size=4, workers=2)
    images, positions = zip(*batches(loader), strict=True)
    x = torch.cat(images)
    assert x.shape == (10, 3, 16, 16) and x.dtype == torch.float32
    np.testing.assert_array_equal(torch.cat(positions).numpy(), np.arange(10))
    assert -3 < x.mean() < 3 and x.std() > 0.1  # normalised with the ImageNet mean/std
    again = torch.cat([b for b, _ in image_loader(data, "test", train=False, batch_size=10)])
    torch.testing.assert_close(x, again)  # evaluation transforms are deterministic
    train = data.torch_dataset("train", train=True)
    assert train[0][0].shape == (3, 16, 16)
    thumbnails = [png for b in batches(thumbnail_loader(data, "test", workers=2)) for png in b]
    assert len(thumbnails) == 10 and all(t[:4] == b"\x89PNG" for t in thumbnails)


def test_shuffled_imagefolder_keeps_counts(folder):
    natural = imagefolder(*folder).hierarchy
    shuffled = imagefolder(*folder, hierarchy="shuffled").hierarchy
    assert sorted(natural.subclasses_per_superclass()) == sorted(
        shuffled.subclasses_per_superclass()
    )
    assert natural.subclass_ids == shuffled.subclass_ids


@pytest.mark.parametrize(
    "hierarchy, message",
    [
        ({"a": ["cat", "dog"], "b": ["dog"]}, "class 'dog' of superclass 'b' .* in 'a' too"),
        ({"a": ["cat", "cat"]}, "class 'cat' of superclass 'a' .* twice"),
        ({"a": ["cat", "wolf"]}, "class folder .*wolf is missing"),
        ({"a": []}, "should list its class folders"),
        (["cat"], "should map each superclass"),
    ],
)
def test_bad_hierarchy_files(folder, tmp_path, hierarchy, message):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(hierarchy))
    with pytest.raises(DatasetError, match=message):
        imagefolder(folder[0], path)


def test_bad_roots(folder, tmp_path):
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        imagefolder(tmp_path / "nowhere", folder[1])
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="should hold the split folders train/ and val/"):
        imagefolder(tmp_path, folder[1])
    with pytest.raises(DatasetError, match="fewer than subclasses_per_superclass=3"):
        imagefolder(*folder, subclasses_per_superclass=3)
    with pytest.raises(DatasetError, match="hierarchy file .* does not exist"):
        imagefolder(folder[0], tmp_path / "missing.yaml")


def test_corrupt_image_names_its_file_even_from_a_worker(folder, tmp_path):
    root = write_imagefolder(tmp_path / "tree", {"a": ["x", "y"]}, {"train": 2, "test": 2})[0]
    broken = root / "test" / "y" / "y_00001.png"
    broken.write_bytes(broken.read_bytes()[:20])  # truncated
    data = imagefolder(root, root / "hierarchy.json", image_size=16)
    for workers in (0, 1):
        loader = image_loader(data, "test", train=False, batch_size=2, workers=workers)
        with pytest.raises(CorruptImageError) as caught:
            list(batches(loader))
        message = str(caught.value)
        assert message.startswith(f"image {broken} cannot be read or decoded")
        assert "\n" not in message and "replace or delete the file" in message


def test_breeds_living17_on_an_imagenet_tree(living17):
    options = {"root": str(living17), "image_size": 16}
    data = build_dataset(DatasetConfig("imagenet", "breeds-living17", options=options))
    assert data.splits == ("train", "val")
    assert data.hierarchy.n_superclasses == 17 and data.hierarchy.n_subclasses == 68
    # n01440764 (tench) sorts first and is not in living-17: every position is shifted by it
    reference = ImageFolder(str(living17 / "val")).samples
    assert data.sample_index("val").min() == 1 and data.num_samples("val") == 68
    rows = zip(data.sample_index("val"), data.paths("val"), data.subclass("val"), strict=True)
    for i, path, sub in rows:
        assert reference[i][0] == str(living17 / path.decode())
        assert path.decode().split("/")[1] == data.hierarchy.ids[sub]
    shuffled = build_dataset(
        DatasetConfig("imagenet", "breeds-living17-shuffled", hierarchy_seed=1, options=options)
    )
    assert list(shuffled.hierarchy.subclasses_per_superclass()) == [4] * 17
    assert shuffled.hierarchy.superclass_of != data.hierarchy.superclass_of
    assert shuffled.hierarchy.to_json()["superclasses"][0]["wnid"] is None
    cut = build_dataset(
        DatasetConfig(
            "imagenet", "breeds-living17", options={**options, "subclasses_per_superclass": 2}
        )
    )
    assert cut.hierarchy.n_subclasses == 34 and cut.num_samples("train") == 68
    assert cut.hierarchy.ids[:2] == data.hierarchy.ids[:2]  # the first two of each, in order


def test_imagenet_none_is_every_class_its_own_superclass():
    h = build_hierarchy(DatasetConfig("imagenet", "none"))
    assert h.n_superclasses == h.n_subclasses == 1000
    assert h.ids[0] == "n01440764" and h.subclass_names[0] == "tench"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10", 60, 20)
    write_cifar(root, "cifar100", 200, 100)
    return root


def cifar_data(root, name, hierarchy, seed=0, **options):
    return build_dataset(
        DatasetConfig(name, hierarchy, seed, options={"root": str(root), **options})
    )


def test_cifar_label_arithmetic(cifar):
    coarse = cifar_data(cifar, "cifar10", "coarse")
    y = np.arange(60) % 10
    np.testing.assert_array_equal(coarse.subclass("train"), y)
    np.testing.assert_array_equal(coarse.superclass("train"), y % 5)
    three = cifar_data(cifar, "cifar10", "coarse", coarse_classes=3)
    np.testing.assert_array_equal(three.superclass("test"), (np.arange(20) % 10) % 3)
    shuffled = cifar_data(cifar, "cifar10", "random-coarse", seed=4).hierarchy
    assert sorted(shuffled.subclasses_per_superclass()) == [2] * 5
    assert shuffled.superclass_of != coarse.hierarchy.superclass_of
    fine = cifar_data(cifar, "cifar10", "fine", seed=1)
    np.testing.assert_array_equal(fine.superclass("train"), y)
    halves = fine.subclass("train") // 10
    assert set(np.unique(halves)) == {0, 1}
    np.testing.assert_array_equal(fine.subclass("train") % 10, y)
    other = cifar_data(cifar, "cifar10", "fine", seed=2).subclass("train")
    assert not np.array_equal(other, fine.subclass("train"))
    x, _ = coarse.torch_dataset("test", train=False)[0]
    assert x.shape == (3, 32, 32)


def test_cifar100_official_superclasses_match_the_files(cifar):
    data = cifar_data(cifar, "cifar100", "superclass")
    with open(cifar / "cifar-100-python" / "train", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(data.superclass("train"), batch[b"coarse_labels"])
    assert data.hierarchy.n_superclasses == 20 and data.hierarchy.subclass_names[0] == "apple"
    mod20 = cifar_data(cifar, "cifar100", "mod20")
    np.testing.assert_array_equal(mod20.superclass("test"), mod20.subclass("test") % 20)


def test_bad_cifar_folders(cifar, tmp_path):
    with pytest.raises(DatasetError, match="data_batch_1 is missing"):
        cifar_data(tmp_path, "cifar10", "coarse")
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="is not a CIFAR python pickle"):
        cifar_data(tmp_path, "cifar10", "coarse")
