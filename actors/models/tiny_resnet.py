"""A narrow CIFAR-style ResNet built from torchvision's ``BasicBlock``.

Layer names follow the probing paper's ResNet convention: the output of every
residual block (``stage1_block1`` ...) plus the pooled features.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

from actors.models.registry import register_model


class TinyResNet(nn.Module):
    """Stem, three stages of two BasicBlocks (widths w, 2w, 4w), global pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        names, channels = [], width
        for stage, out in enumerate((width, 2 * width, 4 * width), start=1):
            for block in range(1, blocks + 1):
                stride = 2 if (block == 1 and stage > 1) else 1
                downsample = None
                if stride != 1 or channels != out:
                    downsample = nn.Sequential(
                        nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
                    )
                name = f"stage{stage}_block{block}"
                self.add_module(name, BasicBlock(channels, out, stride, downsample))
                names.append(name)
                channels = out
        self.block_names = tuple(names)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        self.probe_layers = (*self.block_names, "pool")

    def forward(self, x):
        x = self.stem(x)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))


@register_model("tiny_resnet")
def tiny_resnet(in_channels: int, num_classes: int, width: int = 16) -> TinyResNet:
    """``width``: channels of the stem and stage 1 (stage 2 has 2x, stage 3 4x)."""
    return TinyResNet(in_channels, num_classes, width=width)
