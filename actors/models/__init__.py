"""Models probed by stratalens, created by name through one registry."""

from actors.models import small_cnn, tiny_resnet  # noqa: F401  (registers the families)
from actors.models.registry import create_model, list_models, probe_layers, register_model
from actors.models.taps import LayerTaps

__all__ = ["LayerTaps", "create_model", "list_models", "probe_layers", "register_model"]
