"""A small VGG-style CNN for the offline datasets (digits, shapes)."""

from __future__ import annotations

from torch import nn

from actors.models.registry import register_model


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """conv1..conv4 (3x3 conv + BN + ReLU, 2x2 max-pool after conv1..conv3), fc1, fc2, head.

    Probed layers: the four conv blocks (global-average-pooled when extracted)
    and the two dense layers after their ReLU; ``fc2`` is the penultimate layer.
    """

    probe_layers = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2")

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.conv1 = _conv_block(in_channels, width, pool=True)
        self.conv2 = _conv_block(width, 2 * width, pool=True)
        self.conv3 = _conv_block(2 * width, 4 * width, pool=True)
        self.conv4 = _conv_block(4 * width, 4 * width, pool=False)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc1 = nn.Sequential(nn.Linear(4 * width, 128), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(128, 64), nn.ReLU(inplace=True))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.head(self.fc2(self.fc1(self.pool(x))))


@register_model("small_cnn")
def small_cnn(in_channels: int, num_classes: int, width: int = 16) -> SmallCNN:
    """``width``: channels of conv1 (conv2 has 2x, conv3 and conv4 4x)."""
    return SmallCNN(in_channels, num_classes, width=width)
