"""Arch items in specs (names or mappings), the models/layers commands, and bad model input."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from actors.models import create_model, probe_layers
from jobs.cli import app
from jobs.spec import ExperimentSpec, SpecError, register_stored_archs

runner = CliRunner()
SHAPES = {"name": "shapes", "hierarchy": "natural", "options": {"test_per_subclass": 10}}


def spec(**overrides) -> dict:
    data = {"name": "t", "datasets": [SHAPES], "archs": ["small_cnn"], "seeds": [0]}
    data.update(overrides)
    return data


def test_names_and_mappings_with_their_stored_keys(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(create_model("resnet18", in_channels=3, num_classes=5).state_dict(), weights)
    parsed = ExperimentSpec.from_dict(
        spec(
            archs=[
                "resnet18",
                {"name": "resnet18", "weights": str(weights)},
                {"name": "resnet18", "layers": ["layer4.1", "avgpool"], "pool": "max"},
                {"name": "vgg16_ln", "key": "vgg16-ln"},
            ]
        )
    )
    keys = [a.stored_key for a in parsed.arch_specs]
    assert keys[0] == "resnet18" and keys[3] == "vgg16-ln"
    assert keys[1].startswith("resnet18-") and keys[2].startswith("resnet18-")
    assert len(set(keys)) == 4
    assert parsed.arch(keys[2]).probe_layers() == ("layer4.1", "avgpool")
    assert parsed.arch_specs[0].probe_layers()[-1] == "avgpool"
    # the canonical JSON keeps plain names as names (stored specs stay comparable)
    assert json.loads(parsed.canonical_json())["archs"][0] == "resnet18"
    register_stored_archs(parsed.canonical_json())
    assert probe_layers(keys[2]) == ("layer4.1", "avgpool")


def test_probe_only_and_probe_epoch_zero():
    parsed = ExperimentSpec.from_dict(spec(training={"epochs": 0}))
    assert parsed.epochs_to_probe == [0]
    parsed = ExperimentSpec.from_dict(spec(training={"epochs": 2}, probe_epochs=[0, 2]))
    assert parsed.epochs_to_probe == [0, 2]


@pytest.mark.parametrize(
    "archs, message",
    [
        (["resnet5"], r"archs: unknown arch 'resnet5'; did you mean 'resnet50'"),
        (
            [{"name": "resnet18", "layers": ["layer4.9"]}],
            r"archs.0: unknown layer 'layer4.9' of arch 'resnet18'; did you mean 'layer4.1'",
        ),
        (["resnet18", {"name": "resnet18"}], "both stored as 'resnet18'"),
        ([{"name": "resnet18", "key": "a"}, {"name": "vgg11", "key": "a"}], "both stored as 'a'"),
        ([{"name": "resnet18", "pool": "median"}], "archs.0.pool"),
        ([{"name": "resnet18", "options": {"depth": 3}}], "does not accept options"),
        ([{"name": "resnet18", "weights": "/no/such.pt"}], "weights file /no/such.pt does not"),
        (["vgg16"], "cannot run on 1x8x8 images"),
    ],
)
def test_bad_arch_items_give_one_sentence(archs, message):
    data = spec(archs=archs)
    if archs == ["vgg16"]:
        data["datasets"] = [{"name": "digits", "hierarchy": "coarse"}]
    with pytest.raises(SpecError, match=message):
        ExperimentSpec.from_dict(data)


def test_weights_must_fit_the_model_per_dataset(tmp_path):
    weights = tmp_path / "imagenet.pt"
    torch.save(create_model("resnet18", in_channels=3, num_classes=1000).state_dict(), weights)
    with pytest.raises(SpecError, match=r"tensor 'fc.weight' is \(1000, 512\) in the file"):
        ExperimentSpec.from_dict(spec(archs=[{"name": "resnet18", "weights": str(weights)}]))
    item = {"name": "resnet18", "weights": str(weights), "load_head": False}
    ExperimentSpec.from_dict(spec(archs=[item]))


def test_byte_limit_per_sample_and_force():
    data = spec(archs=["resnet18"], storage={"max_bytes_per_sample": 4096})
    with pytest.raises(SpecError, match=r"'resnet18' would store 9,728 bytes per sample"):
        ExperimentSpec.from_dict(data)
    ExperimentSpec.from_dict(data, force=True)
    data["storage"]["embedding_dtype"] = "float16"
    with pytest.raises(SpecError, match="4,864 bytes"):
        ExperimentSpec.from_dict(data)


def test_gpu_and_data_parallel_resources_are_checked():
    with pytest.raises(SpecError, match="trainer_gpus is 0"):
        ExperimentSpec.from_dict(spec(resources={"device": "cuda"}))
    parsed = ExperimentSpec.from_dict(spec(resources={"trainer_gpus": 4}))
    assert parsed.resources.ddp_workers == 4 and parsed.resources.extractor_gpus == 1
    with pytest.raises(SpecError, match="should be a whole number"):
        ExperimentSpec.from_dict(spec(resources={"trainer_gpus": 2.5}))
    with pytest.raises(SpecError, match="trainer_gpus should be 2"):
        ExperimentSpec.from_dict(spec(resources={"trainer_workers": 2, "trainer_gpus": 1}))
    with pytest.raises(SpecError, match="batch_size = 63 does not split evenly over 2"):
        ExperimentSpec.from_dict(
            spec(resources={"trainer_workers": 2}, training={"batch_size": 63})
        )
    with pytest.raises(SpecError, match="checkpoint_every is 0"):
        ExperimentSpec.from_dict(
            spec(resources={"trainer_workers": 2}, training={"checkpoint_every": 0})
        )


def test_new_training_fields_are_checked():
    with pytest.raises(SpecError, match="training.optimizer"):
        ExperimentSpec.from_dict(spec(training={"optimizer": "lamb"}))
    with pytest.raises(SpecError, match="training.ema_decay"):
        ExperimentSpec.from_dict(spec(training={"ema_decay": 1.5}))
    parsed = ExperimentSpec.from_dict(
        spec(training={"loss": "cosine_softmax", "optimizer": "adamw", "ema_decay": 0.99})
    )
    assert parsed.training.config().optimizer == "adamw"


# -- the CLI ---------------------------------------------------------------------
def test_models_and_layers_commands():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    names = {row["name"] for row in json.loads(result.output)}
    assert {"resnet50", "vgg16_ln", "cifar_resnet18", "vit_b_16", "small_cnn"} <= names
    result = runner.invoke(app, ["layers", "resnet50", "--json"])
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert len(summary["layers"]) == 17 and summary["layers"][0] == {
        "layer": "layer1.0",
        "dim": 256,
    }
    assert summary["bytes_per_sample"] == 17152 * 4
    result = runner.invoke(app, ["layers", "resnet18", "--nodes"])
    assert result.exit_code == 0 and "layer4.1.add" in result.output.split()
    result = runner.invoke(app, ["layers", "vgg16"])
    assert result.exit_code == 0 and "classifier.4" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["layers", "resnt50"], "did you mean 'resnet50'"),
        (["layers", "vgg16", "--image-size", "8"], "cannot run on 3x8x8 images"),
        (["layers", "resnet18", "--options", "[1]"], "--options should be a JSON object"),
    ],
)
def test_layers_command_errors(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"archs": [{"name": "resnet18", "layers": ["layer9"]}]}, "unknown layer 'layer9'"),
        ({"archs": ["resnet18"], "storage": {"max_bytes_per_sample": 100}}, "--force"),
    ],
)
def test_run_refuses_bad_models_and_writes_nothing(tmp_path, overrides, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(**overrides)))
    result = runner.invoke(app, ["run", str(path), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "s").exists()
