"""What a spec's arch item builds and probes: :class:`ModelConfig`, its layers and their sizes.

Layer sets and stored dimensions are worked out on PyTorch's ``meta`` device:
no memory is allocated and no arithmetic is done, so ``stratalens layers
vit_b_16`` and a spec's validation take a fraction of a second.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from torch import nn

from actors.models.registry import ModelEntry, ModelError, create_model, model_entry
from actors.models.registry import unknown_name_message as _unknown
from actors.models.taps import POOLS, TOKEN_READOUTS, FeatureReader

FLOAT_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class ModelConfig:
    """One model to train or probe: a registered name and how to start and read it.

    Attributes
    ----------
    name : str
        A name from :func:`actors.models.list_models`.
    weights : str, optional
        A local file the model starts from: a state_dict or a full checkpoint
        (``path#entry`` picks a checkpoint's entry, e.g. ``#ema``).
    layers : tuple of str, optional
        Probed layers; default: the model's default set.
    pool : {"avg", "max"}
        Global pooling of conv maps when stored.
    tokens : {"cls", "mean"}
        Token sequences (ViT): the CLS token or the mean over tokens.
    options : dict
        Keyword arguments of the model's builder.
    load_head : bool
        False drops the classification head's tensors from ``weights`` (the
        model keeps its own head, sized to the superclasses).
    """

    name: str
    weights: str | None = None
    layers: tuple[str, ...] | None = None
    pool: str = "avg"
    tokens: str = "cls"
    options: dict = field(default_factory=dict)
    load_head: bool = True

    def __post_init__(self) -> None:
        model_entry(self.name)
        if self.pool not in POOLS:
            raise ModelError(f"pool {self.pool!r} is not one of {list(POOLS)}; pick one")
        if self.tokens not in TOKEN_READOUTS:
            raise ModelError(
                f"tokens {self.tokens!r} is not one of {list(TOKEN_READOUTS)}; pick one"
            )

    @property
    def entry(self) -> ModelEntry:
        return model_entry(self.name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def create(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int | None = None,
        device: str | torch.device | None = None,
    ) -> nn.Module:
        """The randomly initialised model (on ``device``; ``meta`` allocates nothing)."""
        with torch.device(device or "cpu"):
            return create_model(
                self.name,
                in_channels=in_channels,
                num_classes=num_classes,
                image_size=image_size,
                options=dict(self.options),
            )

    def reader(self, model: nn.Module, layers: tuple[str, ...]) -> FeatureReader:
        """A :class:`FeatureReader` of ``layers`` of ``model`` with this item's readout."""
        entry = self.entry
        return FeatureReader(
            model, layers, taps=entry.taps, pool=self.pool, tokens=self.tokens, nhwc=entry.nhwc
        )


def graph_nodes(model: nn.Module) -> list[str]:
    """The node names of ``model``'s evaluation graph, input to output (torchvision FX)."""
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(model)[1]


def probeable_layers(model: nn.Module, entry: ModelEntry) -> list[str]:
    """Every layer name a spec may list: module paths (hooks) or graph nodes and module prefixes."""
    if entry.taps == "hooks":
        return [name for name, _ in model.named_modules() if name]
    nodes = graph_nodes(model)
    prefixes = {".".join(n.split(".")[:i]) for n in nodes for i in range(1, n.count(".") + 1)}
    return nodes + sorted(prefixes - set(nodes))


def check_layers(config: ModelConfig, model: nn.Module) -> tuple[str, ...]:
    """The layers ``config`` probes in ``model``; ModelError naming an unknown one."""
    if config.layers is None:
        return tuple(model.probe_layers)
    if not config.layers:
        raise ModelError(f"arch {config.name!r} lists no layers; list some or leave layers out")
    seen = set()
    known = None
    for layer in config.layers:
        if layer in seen:
            raise ModelError(f"layer {layer!r} of arch {config.name!r} is listed twice; list once")
        seen.add(layer)
        known = known or set(probeable_layers(model, config.entry))
        if layer not in known:
            raise ModelError(
                _unknown(
                    "layer",
                    layer,
                    known,
                    f"`stratalens layers {config.name} --nodes` lists them",
                    where=f" of arch {config.name!r}",
                )
            )
    return tuple(config.layers)


@lru_cache(maxsize=256)
def _config_layers(config_json: str) -> tuple[str, ...]:
    config = ModelConfig(**json.loads(config_json))
    if config.layers is not None:
        config = ModelConfig(**{**json.loads(config_json), "layers": tuple(config.layers)})
    entry = config.entry
    model = config.create(in_channels=entry.in_channels or 3, num_classes=2, device="meta")
    return check_layers(config, model)


def config_layers(config: ModelConfig) -> tuple[str, ...]:
    """The layers ``config`` probes (its own or the default set), checked, input to output."""
    return _config_layers(config.to_json())


def default_layers(name: str) -> tuple[str, ...]:
    """The default probed layers of registered model ``name``."""
    return config_layers(ModelConfig(name))


def layer_dims(
    config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int
) -> dict[str, int]:
    """``{layer: stored dimension}`` for images of ``input_shape`` (C, H, W).

    Raises ModelError when the model cannot run on images of that size.
    """
    channels, height, width = input_shape
    entry = config.entry
    model = config.create(
        in_channels=entry.in_channels or channels,
        num_classes=num_classes,
        image_size=height,
        device="meta",
    ).eval()
    layers = check_layers(config, model)
    x = torch.empty((1, entry.in_channels or channels, height, width), device="meta")
    try:
        _, features = config.reader(model, layers)(x)
    except (RuntimeError, ValueError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"arch {config.name!r} cannot run on {channels}x{height}x{width} images "
            f"({reason}); give it larger images (options.image_size of file datasets; "
            f"it is built for {entry.image_size} px) or pick another arch"
        ) from None
    return {name: int(value.shape[1]) for name, value in features.items()}


def head_name(model: nn.Module) -> str | None:
    """The classification head: the model's last ``nn.Linear`` (None if it has none)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None
