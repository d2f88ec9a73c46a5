"""torchvision models by name: default layer sets, stored dimensions, readouts, weights files."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from actors.models import (
    ModelConfig,
    ModelError,
    create_model,
    default_layers,
    layer_dims,
    list_models,
    load_weights,
    model_entry,
    probe_layers,
)

RESNET50_DIMS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3 + [2048]
VGG16_CONVS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
TINY_VIT = {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}


def dims(name, size, **config):
    return layer_dims(ModelConfig(name, **config), (3, size, size), num_classes=5)


def test_the_registry_holds_torchvision_and_the_variants():
    names = set(list_models())
    assert {"small_cnn", "tiny_resnet", "resnet18", "resnet50", "vgg16", "vgg16_bn"} <= names
    assert {"vgg16_ln", "vit_b_16", "cifar_resnet18", "densenet121"} <= names
    assert model_entry("resnet18").source == "torchvision"


@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("resnet50", 16)])
def test_resnet_layers_are_every_block_plus_the_pooled_features(name, blocks):
    layers = default_layers(name)
    assert len(layers) == blocks + 1
    assert layers[0] == "layer1.0" and layers[-2] == ("layer4.1" if blocks == 8 else "layer4.2")
    assert layers[-1] == "avgpool"
    if name == "resnet50":
        assert list(dims(name, 64).values()) == RESNET50_DIMS
    else:
        assert list(dims(name, 64).values()) == [64, 64, 128, 128, 256, 256, 512, 512, 512]


@pytest.mark.parametrize(
    "name, first, fc6, fc7",
    [
        ("vgg16", "features.1", "classifier.1", "classifier.4"),
        ("vgg16_bn", "features.2", "classifier.1", "classifier.4"),
        ("vgg16_ln", "features.2", "classifier.2", "classifier.6"),
        ("vgg16_bn_fc", "features.2", "classifier.2", "classifier.6"),
    ],
)
def test_vgg_layers_are_each_conv_after_its_relu_then_fc6_fc7(name, first, fc6, fc7):
    layers = default_layers(name)
    assert len(layers) == 15 and layers[0] == first and layers[-2:] == (fc6, fc7)
    assert list(dims(name, 32).values()) == [*VGG16_CONVS, 4096, 4096]
    model = ModelConfig(name).create(in_channels=3, num_classes=5, device="meta")
    kinds = [type(model.get_submodule(layer)) for layer in layers]
    assert set(kinds) == {nn.ReLU}


def test_vgg16_ln_normalises_after_every_conv_and_dense_layer():
    model = ModelConfig("vgg16_ln").create(in_channels=3, num_classes=5, device="meta")
    modules = list(model.features) + list(model.classifier)
    for i, module in enumerate(modules[:-1]):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert isinstance(modules[i + 1], nn.LayerNorm), i
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_vgg16_bn_fc_batch_normalises_after_every_conv_and_dense_layer():
    model = ModelConfig("vgg16_bn_fc").create(in_channels=3, num_classes=5, device="meta")
    modules = list(model.features) + list(model.classifier)
    normalised = 0
    for i, module in enumerate(modules[:-1]):
        if isinstance(module, nn.Conv2d):
            assert isinstance(modules[i + 1], nn.BatchNorm2d), i
            normalised += 1
        elif isinstance(module, nn.Linear):
            assert isinstance(modules[i + 1], nn.BatchNorm1d), i
            normalised += 1
    assert normalised == 13 + 2
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())


def test_vit_layers_are_the_residual_stream_after_each_sub_block():
    layers = default_layers("vit_b_16")
    assert len(layers) == 24
    block = "encoder.layers.encoder_layer_0"
    assert layers[:2] == (f"{block}.add", f"{block}.add_1")
    assert set(dims("vit_b_16", 224).values()) == {768}
    tiny = ModelConfig("vit_b_16", options=TINY_VIT)
    assert len(layer_dims(tiny, (3, 32, 32), 5)) == 4


def test_cifar_variants_have_a_small_stem_and_resnet18_stays_torchvisions():
    cifar = create_model("cifar_resnet18", in_channels=3, num_classes=5)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    plain = create_model("resnet18", in_channels=3, num_classes=5)
    assert plain.conv1.kernel_size == (7, 7) and isinstance(plain.maxpool, nn.MaxPool2d)
    assert plain.fc.out_features == 5


def test_other_families_probe_the_input_of_their_head():
    assert default_layers("densenet121") == ("flatten",)
    assert list(dims("densenet121", 64).values()) == [1024]


def test_stored_features_equal_create_feature_extractor_with_global_pooling():
    torch.manual_seed(0)
    config = ModelConfig("resnet18", layers=("layer2.0", "layer4.1.add", "avgpool", "fc"))
    model = config.create(in_channels=3, num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32)
    logits, features = config.reader(model, config.layers)(x)
    nodes = {"layer2.0": "a", "layer4.1.add": "b", "avgpool": "c", "fc": "d"}
    for module in model.modules():  # else the block's in-place ReLU overwrites its `add`
        if isinstance(module, nn.ReLU):
            module.inplace = False
    direct = create_feature_extractor(model, return_nodes=nodes)(x)
    torch.testing.assert_close(features["layer2.0"], direct["a"].mean(dim=(2, 3)))
    torch.testing.assert_close(features["layer4.1.add"], direct["b"].mean(dim=(2, 3)))
    torch.testing.assert_close(features["avgpool"], direct["c"].flatten(1))
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(features["fc"], logits)
    config_max = ModelConfig("resnet18", layers=("layer2.0",), pool="max")
    _, maxed = config_max.reader(model, ("layer2.0",))(x)
    torch.testing.assert_close(maxed["layer2.0"], direct["a"].amax(dim=(2, 3)))


def test_a_node_before_an_inplace_relu_keeps_its_own_value():
    config = ModelConfig("vgg11", layers=("features.0", "features.1"))
    model = config.create(in_channels=3, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    _, features = config.reader(model, config.layers)(x)
    conv = model.features[0](x).mean(dim=(2, 3))
    torch.testing.assert_close(features["features.0"], conv)
    assert features["features.0"].min() < 0 <= features["features.1"].min()
    assert model.features[1].inplace  # restored after the pass


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_vit_token_readout(tokens):
    config = ModelConfig("vit_b_16", options=TINY_VIT, tokens=tokens)
    model = config.create(in_channels=3, num_classes=5, image_size=32).eval()
    layer = "encoder.layers.encoder_layer_1.add_1"
    x = torch.randn(2, 3, 32, 32)
    _, features = config.reader(model, (layer,))(x)
    stream = create_feature_extractor(model, return_nodes={layer: "s"})(x)["s"]
    expected = stream[:, 0] if tokens == "cls" else stream.mean(dim=1)
    torch.testing.assert_close(features[layer], expected)


def test_unknown_names_list_close_matches():
    with pytest.raises(ModelError, match=r"unknown arch 'resnet5'; did you mean 'resnet50'"):
        create_model("resnet5", in_channels=3, num_classes=2)
    with pytest.raises(ModelError, match=r"unknown layer 'layer4.7' of arch 'resnet18'.*'layer4"):
        layer_dims(ModelConfig("resnet18", layers=("layer4.7",)), (3, 32, 32), 2)
    with pytest.raises(ModelError, match="cannot run on 3x8x8 images"):
        dims("vgg16", 8)


def test_arch_keys_answer_probe_layers():
    from actors.models import register_arch_key

    register_arch_key("resnet18-custom", ("layer4.1",))
    assert probe_layers("resnet18-custom") == ("layer4.1",)
    assert probe_layers("resnet18")[-1] == "avgpool"


# -- weights files ------------------------------------------------------------------
def saved(tmp_path, state, name="w.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_weights_load_from_a_state_dict_or_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = create_model("resnet18", in_channels=3, num_classes=5)
    state = source.state_dict()
    wrapped = {f"module.{k}": v for k, v in state.items()}  # as DDP saves it
    for weights in (
        saved(tmp_path, state),
        saved(tmp_path, {"model": wrapped, "epoch": 3}, "ckpt.pt"),
        saved(tmp_path, {"model": {}, "ema": state}, "ema.pt") + "#ema",
    ):
        target = create_model("resnet18", in_channels=3, num_classes=5)
        load_weights(target, ModelConfig("resnet18", weights=weights))
        for key, value in target.state_dict().items():
            torch.testing.assert_close(value, state[key])


def test_weights_that_do_not_fit_name_the_first_misfit(tmp_path):
    thousand = create_model("resnet18", in_channels=3, num_classes=1000)
    imagenet_head = saved(tmp_path, thousand.state_dict())
    model = create_model("resnet18", in_channels=3, num_classes=5)
    misfit = r"tensor 'fc.weight' is \(1000, 512\) in the file but \(5, 512\) in the model"
    with pytest.raises(ModelError, match=misfit):
        load_weights(model, ModelConfig("resnet18", weights=imagenet_head))
    before = model.fc.weight.clone()
    load_weights(model, ModelConfig("resnet18", weights=imagenet_head, load_head=False))
    torch.testing.assert_close(model.fc.weight, before)  # the model's own head is kept
    vgg = saved(tmp_path, create_model("vgg11", in_channels=3, num_classes=5).state_dict(), "v.pt")
    with pytest.raises(ModelError, match="lacks tensor 'conv1.weight'"):
        load_weights(model, ModelConfig("resnet18", weights=vgg))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read as a PyTorch state_dict"):
        load_weights(model, ModelConfig("resnet18", weights=str(bad)))
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(model, ModelConfig("resnet18", weights=str(tmp_path / "none.pt")))


def test_meta_models_check_weights_without_loading(tmp_path):
    weights = saved(tmp_path, create_model("resnet18", in_channels=3, num_classes=7).state_dict())
    meta = ModelConfig("resnet18").create(in_channels=3, num_classes=5, device="meta")
    with pytest.raises(ModelError, match="'fc.weight'"):
        load_weights(meta, ModelConfig("resnet18", weights=weights))
    assert np.all([p.is_meta for p in meta.parameters()])
