"""A small VGG-style CNN for the offline datasets (digits, shapes)."""

from __future__ import annotations

from torch import nn

from actors.models.registry import ModelError, register_model

POOLINGS = ("avg", "flatten")
CONV_BLOCKS = 4
DENSE_WIDTHS = (128, 64)  # fc1, fc2


def _conv_block(in_channels: int, out_channels: int, pool: bool, batchnorm: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """conv1..conv4 (3x3 conv + BN + ReLU, 2x2 max-pool after conv1..conv3), fc1, fc2, head.

    Probed layers: the four conv blocks (global-average-pooled when extracted)
    and the dense layers after their ReLU; the last probed layer is the
    penultimate one (``fc2`` by default). Options change the default model:

    - ``pooling``: ``avg`` global-average-pools conv4 before fc1; ``flatten``
      flattens conv4's map, keeping where things are (it needs ``image_size``).
      On 8x8 digits with three max-pools conv4's map is 1x1, so both are the
      same function there; ``max_pools`` keeps a larger map.
    - ``dense_layers``: 2 (fc1, fc2), 1 (fc1) or 0 (the head reads the pooled
      or flattened features, probed as ``pool``).
    - ``batchnorm``: false drops the BatchNorm layers (the convs get biases).
    - ``max_pools``: how many of conv1, conv2, conv3 (in that order) end with a
      2x2 max-pool (3 by default).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 16,
        *,
        pooling: str = "avg",
        dense_layers: int = 2,
        batchnorm: bool = True,
        max_pools: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        _check_options(pooling, dense_layers, max_pools, image_size)
        channels = (width, 2 * width, 4 * width, 4 * width)
        inputs = (in_channels, *channels[:-1])
        for i in range(CONV_BLOCKS):
            block = _conv_block(inputs[i], channels[i], pool=i < max_pools, batchnorm=batchnorm)
            setattr(self, f"conv{i + 1}", block)
        if pooling == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features = channels[-1]
        else:
            self.pool = nn.Flatten()
            side = image_size // 2**max_pools
            features = channels[-1] * side * side
        dense = []
        for i, out in enumerate(DENSE_WIDTHS[:dense_layers]):
            setattr(self, f"fc{i + 1}", nn.Sequential(nn.Linear(features, out), nn.ReLU(True)))
            dense.append(f"fc{i + 1}")
            features = out
        self.head = nn.Linear(features, num_classes)
        self.dense = tuple(dense)
        convs = tuple(f"conv{i + 1}" for i in range(CONV_BLOCKS))
        self.probe_layers = convs + (self.dense or ("pool",))

    @property
    def penultimate(self) -> str:
        """The layer the head reads: the last dense layer, or the pooled features."""
        return self.probe_layers[-1]

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        x = self.pool(x)
        for name in self.dense:
            x = getattr(self, name)(x)
        return self.head(x)


def _check_options(pooling: str, dense_layers: int, max_pools: int, image_size: int) -> None:
    if pooling not in POOLINGS:
        raise ModelError(f"small_cnn pooling {pooling!r} is not one of {list(POOLINGS)}; pick one")
    if dense_layers not in range(len(DENSE_WIDTHS) + 1):
        raise ModelError(f"small_cnn dense_layers {dense_layers!r} is not 0, 1 or 2; pick one")
    if max_pools not in range(CONV_BLOCKS):
        raise ModelError(f"small_cnn max_pools {max_pools!r} is not 0..3; pick one")
    if pooling == "flatten" and image_size < 2**max_pools:
        raise ModelError(
            f"small_cnn with pooling flatten and {max_pools} max-pools needs images of at "
            f"least {2**max_pools} px, not {image_size}; use fewer max_pools"
        )


@register_model("small_cnn")
def small_cnn(
    in_channels: int,
    num_classes: int,
    width: int = 16,
    pooling: str = "avg",
    dense_layers: int = 2,
    batchnorm: bool = True,
    max_pools: int = 3,
    image_size: int = 32,
) -> SmallCNN:
    """``width``: channels of conv1 (conv2 has 2x, conv3 and conv4 4x); see :class:`SmallCNN`."""
    return SmallCNN(
        in_channels,
        num_classes,
        width=width,
        pooling=pooling,
        dense_layers=dense_layers,
        batchnorm=batchnorm,
        max_pools=max_pools,
        image_size=image_size,
    )
