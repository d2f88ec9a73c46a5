"""Model registry: ``create_model(name, ...)``, ``list_models()``, ``@register_model``.

Each model family lives in its own module and declares, next to its code, the
names of the layers a user probes (``probe_layers``), so these names come from
one place.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Register a factory ``f(in_channels, num_classes) -> nn.Module`` under ``name``.

    The module must expose ``probe_layers``: the names (``model.get_submodule``
    paths) of the layers whose outputs are extracted, input to output.
    """

    def decorator(factory):
        _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """Build registered model ``name`` for images with ``in_channels`` channels."""
    if name not in _MODELS:
        raise ValueError(f"unknown arch {name!r}; choose one of {list_models()}")
    model = _MODELS[name](in_channels=in_channels, num_classes=num_classes)
    missing = [n for n in model.probe_layers if n not in dict(model.named_modules())]
    if missing:  # a registration bug, not user input
        raise RuntimeError(f"model {name!r} declares probe layers it lacks: {missing}")
    return model


@cache
def probe_layers(name: str) -> tuple[str, ...]:
    """The layers extracted for model ``name``, input to output."""
    return tuple(create_model(name, in_channels=1, num_classes=2).probe_layers)
