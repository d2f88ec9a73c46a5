"""Models probed by stratalens, created by name through one registry.

``list_models()`` holds stratalens' small CNNs (``small_cnn``, ``tiny_resnet``),
every torchvision classification model and the variants of
:mod:`actors.models.vision` (``vgg16_ln``, ``cifar_resnet18``, ...).
"""

from actors.models import small_cnn, tiny_resnet, vision  # noqa: F401  (registers the families)
from actors.models.layers import (
    FLOAT_BYTES,
    ModelConfig,
    check_layers,
    config_layers,
    default_layers,
    graph_nodes,
    head_name,
    layer_dims,
    probeable_layers,
)
from actors.models.registry import (
    ModelError,
    create_model,
    list_models,
    model_entry,
    probe_layers,
    register_arch_key,
    register_model,
)
from actors.models.taps import POOLS, TOKEN_READOUTS, FeatureReader, LayerTaps, reduce_output
from actors.models.weights import fit_state_dict, load_weights, read_state_dict

__all__ = [
    "FLOAT_BYTES",
    "POOLS",
    "TOKEN_READOUTS",
    "FeatureReader",
    "LayerTaps",
    "ModelConfig",
    "ModelError",
    "check_layers",
    "config_layers",
    "create_model",
    "default_layers",
    "fit_state_dict",
    "graph_nodes",
    "head_name",
    "layer_dims",
    "list_models",
    "load_weights",
    "model_entry",
    "probe_layers",
    "probeable_layers",
    "read_state_dict",
    "reduce_output",
    "register_arch_key",
    "register_model",
]
