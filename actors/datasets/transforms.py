"""Decoding and transforms for image files (torchvision.io + transforms.v2).

Training: random-resized-crop to ``image_size`` and a horizontal flip;
evaluation: resize the shorter side to ``image_size * 256 / 224`` and centre-crop
``image_size``. Both end as float32 normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_image, encode_png
from torchvision.transforms import v2

from actors.datasets.base import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224
THUMBNAIL_SIZE = 64


class CorruptImageError(DatasetError):
    """An image file could not be read or decoded; the message names the file."""


def image_transform(image_size: int, *, train: bool) -> v2.Compose:
    """uint8 (3, H, W) -> float32 (3, image_size, image_size), normalised."""
    if train:
        geometry = [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [
            v2.Resize(int(image_size * EVAL_RESIZE_RATIO), antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose(
        [
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def decode_file(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB image of a JPEG/PNG/... file; CorruptImageError if unreadable."""
    try:
        return decode_image(path, mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorruptImageError(
            f"image {path} cannot be read or decoded ({str(exc).splitlines()[0]}); "
            "replace or delete the file, then re-run (finished units are kept)"
        ) from None


def thumbnail_png(image: torch.Tensor, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG bytes of a uint8 (C, H, W) image, shorter side ``size`` (upscaled if smaller)."""
    small = v2.Resize(size, antialias=True)(image)
    return encode_png(small.contiguous()).numpy().tobytes()


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crops and horizontal flips of a training batch (B, C, H, W), per image.

    Each image is zero-padded by 1/8 of its side (at least 1 pixel), cropped back
    to its size at a random offset, and flipped left-right with probability 1/2
    (the CIFAR recipe; the spec's ``training.augment``). Draws come from ``generator``.
    """
    n, _, height, width = x.shape
    pad = max(1, height // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack(
        [padded[i, :, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(n)]
    )
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
