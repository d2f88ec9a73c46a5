"""A reduced study on generated ImageFolder, ImageNet (BREEDS) and CIFAR fixtures,
through real Ray and Lance: rows land under the right sample and file."""

import numpy as np
import pytest
from torchvision.datasets import ImageFolder
from typer.testing import CliRunner

from actors.datasets import DatasetConfig, build_hierarchy
from actors.datasets.synthetic import write_cifar, write_image_tree, write_imagefolder
from actors.models import probe_layers
from jobs.cli import app
from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from storage import EmbeddingStore, embeddings_table
from storage import schema as S
from storage.filters import where

pytestmark = pytest.mark.integration
LAYERS = probe_layers("small_cnn")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    folder, hierarchy_file = write_imagefolder(
        base / "folder",
        {"animals": ["cat", "dog"], "vehicles": ["bus", "car"]},
        {"train": 6, "val": 3},
        extra_classes=("ant",),
    )
    wnids = build_hierarchy(DatasetConfig("imagenet", "breeds-living17")).ids
    imagenet = write_image_tree(base / "imagenet", list(wnids), {"train": 2, "val": 1}, size=12)
    cifar = write_cifar(base / "cifar", "cifar10", 100, 40)
    return {"folder": (folder, hierarchy_file), "imagenet": imagenet, "cifar": cifar}


def file_spec(roots, name="files") -> dict:
    folder, hierarchy_file = roots["folder"]
    small = {"image_size": 16}
    return {
        "name": name,
        "datasets": [
            {
                "name": "imagefolder",
                "hierarchy": "natural",
                "options": {"root": str(folder), "hierarchy_file": str(hierarchy_file), **small},
            },
            {
                "name": "imagenet",
                "hierarchy": "breeds-living17",
                "options": {"root": str(roots["imagenet"]), "thumbnails": "all", **small},
            },
            {"name": "cifar10", "hierarchy": "coarse", "options": {"root": str(roots["cifar"])}},
        ],
        "archs": ["small_cnn"],
        "seeds": [0],
        "training": {"epochs": 1, "batch_size": 16},
        "clustering": {"methods": ["ward"]},
        "resources": {"loader_workers": 1},
    }


@pytest.fixture(scope="module")
def study(roots, tmp_path_factory, local_ray):
    spec = ExperimentSpec.from_dict(file_spec(roots))
    store = EmbeddingStore(str(tmp_path_factory.mktemp("files") / "store"))
    run_experiment(spec, store)
    return spec, store


def test_samples_rows_name_their_files_in_imagefolder_order(study, roots):
    spec, store = study
    samples = store.read(S.SAMPLES).to_pandas()
    folder = roots["folder"][0]
    sizes = {("imagefolder", "train"): 24, ("imagefolder", "val"): 12}
    sizes |= {("imagenet", "train"): 68 * 2, ("imagenet", "val"): 68}
    for dataset, root in (("imagefolder", folder), ("imagenet", roots["imagenet"])):
        for split in ("train", "val"):
            rows = samples[(samples.dataset == dataset) & (samples.split == split)]
            reference = ImageFolder(str(root / split)).samples
            assert len(rows) == sizes[dataset, split]
            for index, path in zip(rows.sample_index, rows.path, strict=True):
                assert reference[index][0] == str(root / path)
    folder_rows = samples[samples.dataset == "imagefolder"]
    # ant (not in the hierarchy) sorts first: the kept files start after its 6 / 3
    assert folder_rows[folder_rows.split == "train"].sample_index.min() == 6
    # thumbnails: held-out split only by default, every split with thumbnails: all
    assert folder_rows[folder_rows.split == "train"].thumbnail.isna().all()
    assert folder_rows[folder_rows.split == "val"].thumbnail.notna().all()
    assert samples[samples.dataset == "imagenet"].thumbnail.notna().all()
    cifar = samples[samples.dataset == "cifar10"]
    assert cifar.path.isna().all() and sorted(cifar.split.unique()) == ["test", "train"]
    np.testing.assert_array_equal(cifar[cifar.split == "train"].superclass, np.arange(100) % 10 % 5)


def test_embeddings_cover_each_split_under_the_dataset_split_names(study):
    spec, store = study
    samples = store.read(S.SAMPLES).to_pandas()
    for layer in LAYERS:
        rows = store.read(embeddings_table("files", "small_cnn", layer)).to_pandas()
        for dataset_id, group in rows.groupby("dataset_id"):
            expected = samples[samples.dataset_id == dataset_id]
            assert set(group.split) == set(expected.split)
            for split, part in group.groupby("split"):
                kept = expected[expected.split == split].set_index("sample_index")
                assert sorted(part.sample_index) == sorted(kept.index)
                np.testing.assert_array_equal(
                    part.subclass.to_numpy(), kept.loc[part.sample_index, "subclass"].to_numpy()
                )


def test_every_stage_ran_on_the_held_out_split(study):
    spec, store = study
    runs = store.read(S.RUNS).to_pandas()
    assert len(runs) == 3 and set(runs.status) == {"done"}
    assert runs.test_accuracy.between(0, 1).all()
    clusterings = store.read(S.CLUSTERINGS, columns=["dataset_id", "split"]).to_pandas()
    pairs = zip(clusterings.dataset_id, clusterings.split, strict=True)
    split_of = {d.split("-")[0]: s for d, s in pairs}
    assert split_of == {"imagefolder": "val", "imagenet": "val", "cifar10": "test"}
    ncc = store.read(S.METRICS, filter=where(metric="ncc_subclass")).to_pandas()
    assert len(ncc) == 3 * len(LAYERS)
    assert set(ncc.split) == {"val", "test"}


def test_a_corrupt_image_met_mid_run_stops_with_its_path(roots, tmp_path, local_ray):
    folder = write_imagefolder(
        tmp_path / "tree", {"a": ["x", "y"], "b": ["z", "w"]}, {"train": 3, "val": 2}
    )[0]
    broken = folder / "train" / "z" / "z_00002.png"
    broken.write_bytes(broken.read_bytes()[:30])
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: broken\n"
        "datasets: [{name: imagefolder, hierarchy: natural, options: "
        f"{{root: {folder}, hierarchy_file: {folder / 'hierarchy.json'}, image_size: 16}}}}]\n"
        "archs: [small_cnn]\nseeds: [0]\ntraining: {epochs: 1, batch_size: 4}\n"
        "clustering: {methods: [ward]}\nresources: {loader_workers: 1}\n"
    )
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", str(spec), "--store", str(store)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"error: image {broken} cannot be read or decoded" in message
    assert "Traceback" not in result.output
    # the samples rows, written before training, stay; no run is marked done
    assert EmbeddingStore(str(store)).read(S.RUNS).num_rows == 0
