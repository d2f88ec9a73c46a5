import pytest
import torch

from actors.models import LayerTaps, create_model


@pytest.mark.parametrize("arch", ["small_cnn", "tiny_resnet"])
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_every_probe_layer_is_tapped_and_pooled(arch, channels, size):
    model = create_model(arch, in_channels=channels, num_classes=5).eval()
    with LayerTaps(model, model.probe_layers) as taps:
        logits = model(torch.rand(3, channels, size, size))
    assert logits.shape == (3, 5)
    assert list(taps.outputs) == list(model.probe_layers)
    assert all(v.ndim == 2 and v.shape[0] == 3 for v in taps.outputs.values())
    # hooks are removed on exit
    assert all(not m._forward_hooks for m in model.modules())


def test_conv_outputs_are_global_average_pooled():
    model = create_model("small_cnn", in_channels=3, num_classes=2).eval()
    x = torch.rand(2, 3, 32, 32)
    with LayerTaps(model, ["conv1"]) as taps:
        model(x)
    expected = model.conv1(x).mean(dim=(2, 3))
    torch.testing.assert_close(taps.outputs["conv1"], expected)


def test_resnet_layer_names_follow_the_paper_convention():
    model = create_model("tiny_resnet", in_channels=3, num_classes=2)
    assert model.probe_layers[0] == "stage1_block1" and model.probe_layers[-1] == "pool"


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch 'vgg99'"):
        create_model("vgg99", in_channels=3, num_classes=2)
