"""Model registry: ``create_model(name, ...)``, ``list_models()``, ``@register_model``.

Each model family lives in its own module and declares, next to its code, how
its default probed layers are found (``default_layers``), so layer names come
from one place. Two kinds of entries:

- stratalens' own small models (``small_cnn``, ``tiny_resnet``): factories
  ``f(in_channels, num_classes)`` whose module declares ``probe_layers``,
  module paths read with forward hooks;
- torchvision classification models and variants built from them
  (:mod:`actors.models.vision`): any node name of
  ``torchvision.models.feature_extraction.get_graph_node_names`` can be probed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

MAX_CLOSE_MATCHES = 3


class ModelError(ValueError):
    """A model, layer or weights file cannot be used as asked; the message says why."""


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered model and find its default probed layers.

    Attributes
    ----------
    name : str
    family : str
        ``small``, ``resnet``, ``vgg``, ``vit`` or ``other`` (how default layers are chosen).
    build : callable
        ``build(in_channels=, num_classes=, image_size=, **options) -> nn.Module``.
    default_layers : callable
        ``default_layers(model) -> tuple of str``, input to output.
    taps : str
        ``hooks`` (layers are module paths) or ``fx`` (graph node names).
    in_channels : int or None
        Channels the model takes (grey images are repeated to 3), None where any.
    image_size : int
        The input size its layers are listed at by default (``stratalens layers``).
    source : str
        ``stratalens`` or ``torchvision``.
    nhwc : bool
        Whether its 4-D feature maps are (B, H, W, C) (Swin), not (B, C, H, W).
    """

    name: str
    family: str
    build: Callable[..., nn.Module]
    default_layers: Callable[[nn.Module], tuple[str, ...]]
    taps: str = "fx"
    in_channels: int | None = 3
    image_size: int = 224
    source: str = "torchvision"
    nhwc: bool = False


_MODELS: dict[str, ModelEntry] = {}
# Arch keys of spec items with their own layer sets (``{name, layers: [...]}``): key -> layers.
_KEYS: dict[str, tuple[str, ...]] = {}


def add_model(entry: ModelEntry) -> None:
    """Register ``entry`` under its name (a later registration replaces an earlier one)."""
    _MODELS[entry.name] = entry


def register_model(name: str, *, image_size: int = 32):
    """Register a factory ``f(in_channels, num_classes, **options) -> nn.Module`` under ``name``.

    The module must expose ``probe_layers``: the names (``model.get_submodule``
    paths) of the layers whose outputs are extracted, input to output. The
    arch's ``options`` are the factory's keyword arguments (an unknown one is
    refused by :func:`create_model`); a factory with an ``image_size``
    parameter is given the input size.
    """

    def decorator(factory):
        takes_size = "image_size" in inspect.signature(factory).parameters

        def build(in_channels: int, num_classes: int, image_size: int | None = None, **options):
            if takes_size and image_size is not None:  # a factory whose shape depends on it
                options = {**options, "image_size": image_size}
            return factory(in_channels=in_channels, num_classes=num_classes, **options)

        add_model(
            ModelEntry(
                name=name,
                family="small",
                build=build,
                default_layers=lambda model: tuple(model.probe_layers),
                taps="hooks",
                in_channels=None,
                image_size=image_size,
                source="stratalens",
            )
        )
        return factory

    return decorator


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_MODELS)


def unknown_name_message(what: str, name: str, known, hint: str, where: str = "") -> str:
    """``unknown WHAT 'x'WHERE; did you mean 'a', 'b'? HINT``, close matches from ``known``."""
    close = difflib.get_close_matches(name, list(known), n=MAX_CLOSE_MATCHES, cutoff=0.6)
    guess = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {what} {name!r}{where}; {guess}{hint}"


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ModelError with close matches if there is none."""
    if name not in _MODELS:
        raise ModelError(
            unknown_name_message("arch", name, _MODELS, "`stratalens models` lists them all")
        )
    return _MODELS[name]


def create_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int | None = None,
    options: dict | None = None,
) -> nn.Module:
    """Build registered model ``name`` with a head of ``num_classes`` outputs.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    in_channels : int
        Channels of the images; torchvision models take 3 (grey images are
        repeated by the trainer).
    num_classes : int
        Outputs of the classification head (the number of superclasses).
    image_size : int, optional
        Input size, for models whose shape depends on it (ViT); default: the entry's.
    options : dict, optional
        Keyword arguments of the model's builder (e.g. ViT's ``num_layers``).

    Returns
    -------
    nn.Module
        Randomly initialised (torchvision weights are never fetched), with a
        ``probe_layers`` attribute naming its default probed layers.
    """
    entry = model_entry(name)
    try:
        model = entry.build(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size or entry.image_size,
            **(options or {}),
        )
    except TypeError as exc:
        raise ModelError(
            f"arch {name!r} does not accept options {sorted(options or {})} ({exc}); "
            "fix the arch's options"
        ) from None
    model.probe_layers = entry.default_layers(model)
    if entry.taps == "hooks":
        missing = [n for n in model.probe_layers if n not in dict(model.named_modules())]
        if missing:  # a registration bug, not user input
            raise RuntimeError(f"model {name!r} declares probe layers it lacks: {missing}")
    return model


def register_arch_key(key: str, layers: tuple[str, ...]) -> None:
    """Remember the layer set stored under arch key ``key`` (a spec item with ``layers``)."""
    _KEYS[key] = tuple(layers)


def probe_layers(name: str) -> tuple[str, ...]:
    """The layers extracted for model ``name`` (or a registered arch key), input to output."""
    if name in _KEYS:
        return _KEYS[name]
    from actors.models.layers import default_layers

    return default_layers(name)
