"""small_cnn's options (pooling, dense_layers, batchnorm, max_pools): layers, sizes, errors."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from actors.models import LayerTaps, ModelConfig, ModelError, create_model, layer_dims
from jobs.cli import app
from jobs.spec import ExperimentSpec, SpecError

CONVS = ("conv1", "conv2", "conv3", "conv4")


def build(size: int = 8, channels: int = 1, **options) -> nn.Module:
    return create_model(
        "small_cnn", in_channels=channels, num_classes=5, image_size=size, options=options
    )


def test_the_default_is_the_quickstart_model():
    model = build()
    assert model.probe_layers == (*CONVS, "fc1", "fc2") and model.penultimate == "fc2"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if v.ndim}
    assert shapes["conv1.0.weight"] == (16, 1, 3, 3) and "conv1.0.bias" not in shapes
    assert shapes["conv4.0.weight"] == (64, 64, 3, 3) and shapes["conv4.1.weight"] == (64,)
    assert shapes["fc1.0.weight"] == (128, 64) and shapes["fc2.0.weight"] == (64, 128)
    assert shapes["head.weight"] == (5, 64)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and isinstance(model.pool[0], nn.AdaptiveAvgPool2d)
    # the same random init as spelling every default out
    torch.manual_seed(0)
    plain = build().state_dict()
    torch.manual_seed(0)
    spelled = build(pooling="avg", dense_layers=2, batchnorm=True, max_pools=3).state_dict()
    assert all(torch.equal(plain[k], spelled[k]) for k in plain)


@pytest.mark.parametrize(
    "dense, layers, head_in", [(2, ("fc1", "fc2"), 64), (1, ("fc1",), 128), (0, ("pool",), 64)]
)
def test_dense_layers_set_the_probed_layers_and_the_penultimate(dense, layers, head_in):
    model = build(dense_layers=dense)
    assert model.probe_layers == (*CONVS, *layers)
    assert model.penultimate == layers[-1]
    assert model.head.in_features == head_in
    names = dict(model.named_modules())
    assert ("fc2" in names) == (dense == 2) and ("fc1" in names) == (dense >= 1)
    with LayerTaps(model, model.probe_layers) as taps:
        assert model.eval()(torch.rand(3, 1, 8, 8)).shape == (3, 5)
    assert list(taps.outputs) == list(model.probe_layers)


@pytest.mark.parametrize(
    "options, size, dims",
    [
        ({}, 8, [16, 32, 64, 64, 128, 64]),
        ({"dense_layers": 0}, 8, [16, 32, 64, 64, 64]),
        ({"pooling": "flatten", "max_pools": 1, "dense_layers": 0}, 8, [16, 32, 64, 64, 1024]),
        ({"pooling": "flatten", "dense_layers": 0}, 32, [16, 32, 64, 64, 64 * 4 * 4]),
        ({"pooling": "flatten", "max_pools": 0, "dense_layers": 1}, 8, [16, 32, 64, 64, 128]),
    ],
)
def test_stored_dimensions_follow_pooling_and_map_size(options, size, dims):
    config = ModelConfig("small_cnn", options=options)
    assert list(layer_dims(config, (1, size, size), num_classes=5).values()) == dims
    model = build(size=size, **options)
    assert model.eval()(torch.rand(2, 1, size, size)).shape == (2, 5)


def test_flatten_is_global_average_pooling_on_digits_1x1_map():
    """Three max-pools take 8x8 digits to a 1x1 conv4 map: both poolings are one function."""
    avg, flat = build(), build(pooling="flatten")
    flat.load_state_dict(avg.state_dict())
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(avg.eval()(x), flat.eval()(x), rtol=0, atol=0)
    # with one max-pool the map is 4x4: flatten keeps 16 positions per channel
    assert build(pooling="flatten", max_pools=1).fc1[0].in_features == 64 * 16
    assert build(max_pools=1).fc1[0].in_features == 64


def test_batchnorm_off_drops_every_batchnorm_and_gives_the_convs_biases():
    model = build(batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is not None for c in convs)
    assert model.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pooling": "max"}, "small_cnn pooling 'max' is not one of"),
        ({"dense_layers": 3}, "small_cnn dense_layers 3 is not 0, 1 or 2"),
        ({"max_pools": 4}, "small_cnn max_pools 4 is not 0..3"),
    ],
)
def test_bad_options_are_one_sentence(options, message):
    with pytest.raises(ModelError, match=message):
        build(**options)


def test_flatten_refuses_images_smaller_than_its_max_pools():
    with pytest.raises(ModelError, match="needs images of at least 8 px, not 4"):
        build(size=4, pooling="flatten")


def test_spec_items_with_options_validate_on_digits_and_refuse_bad_ones():
    spec = {
        "name": "opts",
        "datasets": [{"name": "digits", "hierarchy": "coarse"}],
        "archs": [
            {"name": "small_cnn", "key": "flat", "options": {"pooling": "flatten", "max_pools": 1}},
            {"name": "small_cnn", "key": "d0", "options": {"dense_layers": 0}},
        ],
        "seeds": [0],
    }
    parsed = ExperimentSpec.from_dict(spec)
    assert [a.probe_layers()[-1] for a in parsed.arch_specs] == ["fc2", "pool"]
    spec["archs"][1]["options"] = {"dense_layers": 5}
    with pytest.raises(SpecError, match="dense_layers 5 is not 0, 1 or 2"):
        ExperimentSpec.from_dict(spec)


def test_layers_command_lists_an_options_layer_set():
    runner = CliRunner()
    opts = json.dumps({"pooling": "flatten", "max_pools": 1, "dense_layers": 0})
    result = runner.invoke(
        app, ["layers", "small_cnn", "--image-size", "8", "--options", opts, "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["layers"]
    assert [(r["layer"], r["dim"]) for r in rows][-1] == ("pool", 1024)
    bad = runner.invoke(app, ["layers", "small_cnn", "--options", '{"pooling": "sum"}'])
    assert bad.exit_code == 2 and "pooling 'sum'" in bad.output
