"""torchvision's classification models, by name, and variants built from them.

Every ``torchvision.models`` classification builder is registered under its
own name (``resnet50``, ``vgg16_bn``, ``vit_b_16``, ...), always randomly
initialised (``weights=None``: nothing is downloaded; a spec item's
``weights`` names a local file). Default probed layers, with torchvision's
own module names:

- ResNet / ResNeXt / Wide ResNet: every residual block output (``layer1.0`` ..
  ``layer4.2``) plus the pooled features (``avgpool``);
- VGG: every conv layer after its ReLU (``features.1`` ..), plus fc6 and fc7
  after their ReLU (``classifier.1``, ``classifier.4``; ``classifier.2``,
  ``classifier.6`` for the ``_ln`` and ``_bn_fc`` variants);
- ViT: the residual stream after each attention and each MLP sub-block
  (``encoder.layers.encoder_layer_0.add``, ``...add_1``, ...);
- every other model: the input of its classification head (the penultimate
  representation; list other nodes with ``stratalens layers ARCH --nodes``).

Variants registered here: ``vgg11_ln`` .. ``vgg19_ln`` (LayerNorm over
channels after every conv and dense layer, as in the probing paper's VGG-16 +
LayerNorm), ``vgg11_bn_fc`` .. ``vgg19_bn_fc`` (BatchNorm after every conv and
dense layer, the paper's VGG-16 + BatchNorm; torchvision's own ``vgg16_bn`` has
none on its dense layers) and ``cifar_resnet18`` .. ``cifar_resnet152`` (a 3x3 stride-1 stem
and no max-pool, for 32 px images).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.vgg import cfgs as VGG_CONFIGS
from torchvision.models.vision_transformer import VisionTransformer

from actors.models.registry import ModelEntry, add_model

CIFAR_IMAGE_SIZE = 32
VGG_NORM_DEPTHS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
CIFAR_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VIT_SHAPE_OPTIONS = ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
# Builders whose auxiliary heads would make training return tuples.
NO_AUX_LOGITS = ("googlenet", "inception_v3")


def family_of(name: str) -> str:
    """``resnet``, ``vgg``, ``vit`` or ``other`` for a torchvision model name."""
    if name.startswith(("resnet", "resnext", "wide_resnet", "cifar_resnet")):
        return "resnet"
    if name.startswith("vgg"):
        return "vgg"
    if name.startswith("vit_"):
        return "vit"
    return "other"


# -- default layers per family -----------------------------------------------------
def resnet_layers(model: nn.Module) -> tuple[str, ...]:
    """Every residual block output, ``layer1.0`` .. ``layer4.N``, then ``avgpool``."""
    blocks = [
        f"{stage}.{i}"
        for stage in ("layer1", "layer2", "layer3", "layer4")
        for i in range(len(model.get_submodule(stage)))
    ]
    return (*blocks, "avgpool")


def vgg_layers(model: nn.Module) -> tuple[str, ...]:
    """Each conv layer after its ReLU, then fc6 and fc7 after their ReLU."""
    relus = [
        f"{part}.{i}"
        for part in ("features", "classifier")
        for i, module in enumerate(model.get_submodule(part))
        if isinstance(module, nn.ReLU)
    ]
    return tuple(relus)


def vit_layers(model: nn.Module) -> tuple[str, ...]:
    """The residual stream after each attention (``add``) and MLP (``add_1``) sub-block."""
    return tuple(
        f"encoder.layers.{name}.{node}"
        for name, _ in model.encoder.layers.named_children()
        for node in ("add", "add_1")
    )


def head_input_layer(model: nn.Module) -> tuple[str, ...]:
    """The node whose output the classification head reads (the penultimate representation)."""
    from actors.models.layers import graph_nodes

    nodes = graph_nodes(model)
    return (nodes[-2],)


DEFAULT_LAYERS = {
    "resnet": resnet_layers,
    "vgg": vgg_layers,
    "vit": vit_layers,
    "other": head_input_layer,
}


# -- builders ----------------------------------------------------------------------
def _torchvision_builder(name: str):
    builder = models.get_model_builder(name)
    fixed = {"aux_logits": False, "init_weights": True} if name in NO_AUX_LOGITS else {}

    def build(in_channels: int, num_classes: int, image_size: int, **options) -> nn.Module:
        del in_channels  # torchvision models take RGB; the trainer repeats grey channels
        if name.startswith("vit_"):
            return _vit(name, num_classes, image_size, options)
        return builder(weights=None, num_classes=num_classes, **{**fixed, **options})

    return build


def _vit(name: str, num_classes: int, image_size: int, options: dict) -> nn.Module:
    """torchvision's ViT ``name`` at ``image_size``; shape options give a smaller one."""
    builder = models.get_model_builder(name)
    shape = {k: options.pop(k) for k in VIT_SHAPE_OPTIONS if k in options}
    if not shape:
        return builder(weights=None, num_classes=num_classes, image_size=image_size, **options)
    with torch.device("meta"):
        base = builder(weights=None)
    config = {
        "patch_size": base.patch_size,
        "num_layers": len(base.encoder.layers),
        "num_heads": base.encoder.layers[0].num_heads,
        "hidden_dim": base.hidden_dim,
        "mlp_dim": base.mlp_dim,
        **shape,
    }
    return VisionTransformer(image_size=image_size, num_classes=num_classes, **config, **options)


def _vgg_norm_features(config: list, norm: str) -> nn.Sequential:
    """VGG's conv stack with ``norm`` (``ln``: LayerNorm over channels, ``bn``) after each conv."""
    layers: list[nn.Module] = []
    channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            normalise = LayerNorm2d(v) if norm == "ln" else nn.BatchNorm2d(v)
            layers += [nn.Conv2d(channels, v, 3, padding=1), normalise, nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def _vgg_norm_builder(depth: str, norm: str):
    """VGG-``depth`` normalised (``ln`` or ``bn``) after every conv and dense layer."""
    config = VGG_CONFIGS[VGG_NORM_DEPTHS[depth]]
    dense_norm = nn.LayerNorm if norm == "ln" else nn.BatchNorm1d

    def build(
        in_channels: int, num_classes: int, image_size: int, dropout: float = 0.5
    ) -> nn.Module:
        del in_channels, image_size
        features = _vgg_norm_features(config, norm)
        model = models.VGG(features, num_classes=num_classes, dropout=dropout)
        model.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            dense_norm(4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            dense_norm(4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for module in model.classifier:  # as torchvision's VGG initialises its classifier
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)
        return model

    return build


def _cifar_resnet_builder(name: str):
    builder = models.get_model_builder(name)

    def build(in_channels: int, num_classes: int, image_size: int, **options) -> nn.Module:
        del in_channels, image_size
        model = builder(weights=None, num_classes=num_classes, **options)
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        return model

    return build


def _register() -> None:
    for name in models.list_models(module=models):
        family = family_of(name)
        add_model(
            ModelEntry(
                name=name,
                family=family,
                build=_torchvision_builder(name),
                default_layers=DEFAULT_LAYERS[family],
                image_size=299 if name == "inception_v3" else 224,
                nhwc=name.startswith("swin"),
            )
        )
    for depth in VGG_NORM_DEPTHS:
        for suffix, norm, what in (("ln", "ln", "LayerNorm"), ("bn_fc", "bn", "BatchNorm")):
            add_model(
                ModelEntry(
                    name=f"{depth}_{suffix}",
                    family="vgg",
                    build=_vgg_norm_builder(depth, norm),
                    default_layers=vgg_layers,
                    source=f"stratalens (torchvision VGG, {what} after every conv and dense)",
                )
            )
    for name in CIFAR_RESNETS:
        add_model(
            ModelEntry(
                name=f"cifar_{name}",
                family="resnet",
                build=_cifar_resnet_builder(name),
                default_layers=resnet_layers,
                image_size=CIFAR_IMAGE_SIZE,
                source="stratalens (torchvision ResNet, CIFAR stem)",
            )
        )


_register()
