"""torchvision models through the real pipeline (Ray + Lance) on generated image folders:
ResNet-18 at 32 px for one epoch, a tiny ViT, and a probe-only run of saved weights."""

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from typer.testing import CliRunner

from actors.checkpoints import run_checkpoints
from actors.datasets import DatasetConfig, build_dataset
from actors.datasets.synthetic import write_imagefolder
from actors.models import create_model, default_layers
from jobs.cli import app
from jobs.pipeline import register_experiment, run_experiment
from jobs.spec import ExperimentSpec
from services.report import layer_profile
from storage import EmbeddingStore, embedding_matrix
from storage import schema as S
from storage.blobs import BlobStore

pytestmark = pytest.mark.integration
TINY_VIT = {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
HIERARCHY = {"animals": ["cat", "dog"], "vehicles": ["bus", "car"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root, hierarchy_file = write_imagefolder(
        tmp_path_factory.mktemp("data") / "folder", HIERARCHY, {"train": 6, "val": 4}, size=40
    )
    return {"root": str(root), "hierarchy_file": str(hierarchy_file), "image_size": 32}


def base_spec(name: str, folder: dict, archs: list, epochs: int) -> dict:
    return {
        "name": name,
        "datasets": [{"name": "imagefolder", "hierarchy": "natural", "options": folder}],
        "archs": archs,
        "seeds": [0],
        "training": {"epochs": epochs, "batch_size": 8, "warmup_epochs": 0},
        "clustering": {"methods": ["ward"]},
        "resources": {"loader_workers": 1},
    }


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pt"
    torch.save(create_model("resnet18", in_channels=3, num_classes=2).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def store(folder, weights, tmp_path_factory, local_ray):
    store = EmbeddingStore(str(tmp_path_factory.mktemp("models") / "store"))
    trained = ExperimentSpec.from_dict(
        base_spec(
            "models",
            folder,
            ["resnet18", {"name": "vit_b_16", "key": "vit_tiny", "options": TINY_VIT}],
            epochs=1,
        )
    )
    run_experiment(trained, store)
    probe = ExperimentSpec.from_dict(
        base_spec("probe", folder, [{"name": "resnet18", "weights": str(weights)}], epochs=0)
    )
    run_experiment(probe, store)
    return store


def runs_of(store, experiment):
    runs = store.read(S.RUNS).to_pandas()
    return runs[runs.experiment_id == experiment].set_index("arch")


def test_trained_runs_store_every_default_layer_under_torchvision_names(store):
    runs = runs_of(store, "models")
    assert set(runs.index) == {"resnet18", "vit_tiny"}
    assert set(runs.status) == {"done"} and set(runs.epochs) == {1}
    expected = {
        "resnet18": dict(
            zip(
                default_layers("resnet18"), [64, 64, 128, 128, 256, 256, 512, 512, 512], strict=True
            )
        ),
        "vit_tiny": {
            f"encoder.layers.encoder_layer_{i}.{n}": 32 for i in (0, 1) for n in ("add", "add_1")
        },
    }
    for arch, layers in expected.items():
        for layer, dim in layers.items():
            rows = store.embeddings("models", arch, layer, split="val")
            assert embedding_matrix(rows).shape == (16, dim), (arch, layer)


def test_each_epoch_left_a_checkpoint_under_the_store_root(store):
    blobs = BlobStore(store)
    for run_id in runs_of(store, "models").run_id:
        assert blobs.list(run_checkpoints("models", run_id)) == ["epoch=1.pt"]
    for run_id in runs_of(store, "probe").run_id:  # nothing trained, nothing saved
        assert blobs.list(run_checkpoints("probe", run_id)) == []


def test_probe_only_equals_create_feature_extractor_on_the_same_images(store, folder, weights):
    runs = runs_of(store, "probe")
    assert len(runs) == 1 and runs.status.iloc[0] == "probed" and runs.epochs.iloc[0] == 0
    arch = runs.index[0]
    assert arch.startswith("resnet18-")
    model = create_model("resnet18", in_channels=3, num_classes=2)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    layers = default_layers("resnet18")
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    extractor = create_feature_extractor(model, return_nodes=list(layers))
    data = build_dataset(DatasetConfig("imagefolder", "natural", options=folder))
    images = data.torch_dataset("val", train=False)
    x = torch.stack([images[i][0] for i in range(len(images))])
    with torch.no_grad():
        direct = extractor(x)
    for layer in layers:
        rows = store.embeddings("probe", arch, layer, split="val")
        order = np.argsort(rows.column("sample_index").to_numpy())
        stored = embedding_matrix(rows)[order]
        expected = direct[layer].mean(dim=(2, 3)) if direct[layer].ndim == 4 else direct[layer]
        expected = expected.flatten(1).numpy()[np.argsort(data.sample_index("val"))]
        np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5, err_msg=layer)


def test_scores_and_report_profiles_read_the_arch_keys(store):
    for experiment, n_layers in (("models", 9 + 4), ("probe", 9)):
        profile = layer_profile(store, experiment, method="ward")
        assert len(profile) == n_layers and profile.ami_mean.notna().all()


def test_a_gpu_asked_for_where_there_is_none_writes_nothing(folder, tmp_path, local_ray):
    spec = base_spec("gpu", folder, ["resnet18"], epochs=1)
    spec["resources"] = {"trainer_gpus": 1}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(path), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert "resources.trainer_gpus = 1 asks for GPUs" in result.output
    assert not (tmp_path / "s").exists()


def test_fresh_deletes_the_experiments_checkpoints(folder, tmp_path):
    store = EmbeddingStore(str(tmp_path / "store"))
    blobs = BlobStore(store)
    blobs.put("checkpoints/again/run/epoch=1.pt", b"x")
    blobs.put("checkpoints/other/run/epoch=1.pt", b"x")
    spec = ExperimentSpec.from_dict(base_spec("again", folder, ["small_cnn"], epochs=1))
    register_experiment(spec, store, fresh=True)
    assert blobs.list("checkpoints/again/run") == []
    assert blobs.list("checkpoints/other/run") == ["epoch=1.pt"]
