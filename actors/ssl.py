"""Two-view objectives: VICReg and SimCLR (no labels), supervised contrastive (SupCon).

Each training image is seen twice, under two independent random augmentations
(:func:`batched_view` for the in-memory datasets, in this process;
:func:`view_transform` per sample in the loader's workers for file datasets).
Both views go through the backbone; a :class:`Projector` MLP on the backbone's
penultimate features (the classification head's input) maps them to the
embeddings the loss compares. The projector is trained but never probed: the
probed layers stay the backbone's, and the classification head is left
untrained (nothing reaches it).

- ``vicreg`` (Bardes et al., 2022, as in their code and in Lightly, which
  Ben-Shaul et al. used): ``lambda * mse(Z, Z') + mu * (v(Z) + v(Z')) / 2 +
  nu * (c(Z) + c(Z'))`` with ``v`` the mean hinge ``max(0, 1 - sqrt(Var + 1e-4))``
  per dimension and ``c`` the sum of squared off-diagonal covariances over the
  dimension;
- ``simclr`` (Chen et al., 2020, NT-Xent): for each of the 2N embeddings, the
  cross-entropy of picking its other view among the 2N - 1 others, cosine
  similarities over a temperature;
- ``supcon`` (Khosla et al., 2020, L_out): the same with every embedding of the
  same superclass as a positive, averaged over the positives of each anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from actors.models import ModelError, head_name

TWO_VIEW_LOSSES = ("vicreg", "simclr", "supcon")
LABEL_FREE_LOSSES = ("vicreg", "simclr")  # trained without any label
DEFAULT_TEMPERATURE = {"simclr": 0.5, "supcon": 0.1}  # Lightly's NT-Xent; Khosla et al.
VICREG_EPS = 1e-4


@dataclass(frozen=True)
class SslConfig:
    """Projector, loss weights and view augmentations of the two-view losses.

    ``projector``: widths of the MLP's layers (Linear + BN + ReLU between them,
    the last one a plain Linear). ``temperature``: of SimCLR and SupCon (None:
    ``DEFAULT_TEMPERATURE``). The VICReg weights are lambda, mu and nu.
    Augmentations: a random resized crop keeping ``min_crop`` to 1 of the area
    (aspect 3/4 to 4/3), a rotation of up to ``rotation`` degrees, a horizontal
    flip (``flip``; None: on RGB images only) and, on RGB images, colour jitter
    of strength ``colour_jitter`` (brightness and contrast s, saturation s / 2,
    hue s / 4 in the file datasets' pipeline, no hue in the batched one) with
    probability 0.8 and grayscale with probability 0.2.
    """

    projector: tuple[int, ...] = (512, 128)
    temperature: float | None = None
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    min_crop: float = 0.3
    rotation: float = 0.0
    flip: bool | None = None
    colour_jitter: float = 0.4

    def __post_init__(self):
        object.__setattr__(self, "projector", tuple(int(d) for d in self.projector))

    def temperature_for(self, loss: str) -> float:
        return self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE[loss]

    def flips(self, channels: int) -> bool:
        return self.flip if self.flip is not None else channels == 3


# -- the objectives -------------------------------------------------------------
def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    *,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
) -> torch.Tensor:
    """VICReg on two (N, D) embeddings of the same N images."""
    z_a, z_b = z_a.float(), z_b.float()
    invariance = F.mse_loss(z_a, z_b)
    variance = (_variance_term(z_a) + _variance_term(z_b)) / 2
    covariance = _covariance_term(z_a) + _covariance_term(z_b)
    return (
        invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    )


def _variance_term(z: torch.Tensor) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + VICREG_EPS)
    return F.relu(1 - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    return off_diagonal.pow(2).sum() / d


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent on two (N, D) embeddings of the same N images."""
    ids = torch.arange(len(z_a), device=z_a.device).repeat(2)
    return _contrastive(torch.cat([z_a, z_b]), ids, temperature)


def supcon_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss (L_out) on two views with ``labels`` (N,)."""
    return _contrastive(torch.cat([z_a, z_b]), labels.repeat(2), temperature)


def _contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over anchors of -mean_{p in P(i)} log softmax_{a != i}(cos(z_i, z_a) / t)[p]."""
    z = F.normalize(z.float(), dim=1)
    itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~itself
    count = positives.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1) / count.clamp(min=1)
    return per_anchor[count > 0].mean()


def two_view_loss(
    name: str,
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    labels: torch.Tensor | None,
    config: SslConfig,
) -> torch.Tensor:
    """The loss ``name`` of the projected views; ``labels`` (superclasses) for ``supcon``."""
    if name == "vicreg":
        return vicreg_loss(
            z_a,
            z_b,
            invariance_weight=config.invariance_weight,
            variance_weight=config.variance_weight,
            covariance_weight=config.covariance_weight,
        )
    if name == "simclr":
        return nt_xent_loss(z_a, z_b, config.temperature_for(name))
    if name == "supcon":
        return supcon_loss(z_a, z_b, labels, config.temperature_for(name))
    raise ValueError(f"unknown two-view loss {name!r}; choose one of {list(TWO_VIEW_LOSSES)}")


# -- backbone + projector ---------------------------------------------------------
class Projector(nn.Sequential):
    """MLP ``in -> dims[0] -> ... -> dims[-1]``: Linear + BN + ReLU, then a plain Linear."""

    def __init__(self, in_features: int, dims: tuple[int, ...]):
        layers: list[nn.Module] = []
        width = in_features
        for i, out in enumerate(dims):
            layers.append(nn.Linear(width, out))
            if i < len(dims) - 1:
                layers += [nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            width = out
        super().__init__(*layers)


def penultimate_head(model: nn.Module, arch: str, loss: str) -> tuple[str, nn.Linear]:
    """The head whose input is the penultimate features; one sentence if there is none."""
    name = head_name(model)
    if name is None:
        raise ModelError(
            f"arch {arch!r} has no linear classification head, whose input loss {loss!r} "
            "projects; pick an arch with one"
        )
    return name, model.get_submodule(name)


class HeadInput:
    """Records the input of ``head`` (the penultimate features) at every forward pass."""

    def __init__(self, head: nn.Module):
        self.value: torch.Tensor | None = None
        head.register_forward_pre_hook(self._record)

    def _record(self, module, inputs):
        self.value = inputs[0]


class TwoViewModel(nn.Module):
    """``x -> projector(penultimate features of backbone(x))``; the head's output is unused."""

    def __init__(self, backbone: nn.Module, arch: str, loss: str, dims: tuple[int, ...]):
        super().__init__()
        _, head = penultimate_head(backbone, arch, loss)
        self.backbone = backbone
        self.projector = Projector(head.in_features, dims)
        self._features = HeadInput(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.backbone(x)
        features, self._features.value = self._features.value, None
        return self.projector(features.flatten(1))


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float32 (B, d): the input of ``model``'s head for the batch ``x``."""
    recorder = {}
    head = model.get_submodule(head_name(model))
    handle = head.register_forward_pre_hook(lambda m, inputs: recorder.update(x=inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return recorder["x"].flatten(1).float()


# -- the views ------------------------------------------------------------------------
def batched_view(x: torch.Tensor, generator: torch.Generator, config: SslConfig) -> torch.Tensor:
    """One random view of each image of a float32 (B, C, H, W) batch in [0, 1].

    Each image gets its own crop, rotation, flip (one affine map, bilinear,
    border padding) and, for RGB, colour jitter and grayscale. Random numbers
    come from ``generator``, so a seed gives the same views.
    """
    b, c, _, _ = x.shape

    def uniform(low, high):
        return low + (high - low) * torch.rand(b, generator=generator)

    area = uniform(config.min_crop, 1.0)
    aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # of the crop, as a fraction of the image
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    shift_x, shift_y = uniform(-1, 1) * (1 - width), uniform(-1, 1) * (1 - height)
    angle = uniform(-1, 1) * math.radians(config.rotation)
    mirror = torch.ones(b)
    if config.flips(c):
        mirror = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * width * mirror, -sin * height, shift_x], dim=1),
            torch.stack([sin * width * mirror, cos * height, shift_y], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if c == 3 and config.colour_jitter > 0:
        view = _jitter_colours(view, generator, config.colour_jitter)
    return view


def _grey(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _jitter_colours(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast, saturation (with p 0.8), then grayscale (p 0.2), per image."""
    b = len(x)

    def factor(s):
        jittered = 1 + s * (2 * torch.rand(b, generator=generator) - 1)
        applied = torch.rand(b, generator=generator) < 0.8
        return torch.where(applied, jittered, torch.ones(b)).view(b, 1, 1, 1)

    x = x * factor(strength)
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factor(strength) + mean
    grey = _grey(x)
    x = (x - grey) * factor(strength / 2) + grey
    to_grey = (torch.rand(b, generator=generator) < 0.2).view(b, 1, 1, 1)
    return torch.where(to_grey, _grey(x).expand_as(x), x).clamp(0, 1)


def view_transform(image_size: int, config: SslConfig):
    """uint8 (3, H, W) -> one float32 normalised view (file datasets, per sample)."""
    from torchvision.transforms import v2

    from actors.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

    ops = [v2.RandomResizedCrop(image_size, scale=(config.min_crop, 1.0), antialias=True)]
    if config.rotation > 0:
        ops.append(v2.RandomRotation(config.rotation))
    if config.flips(3):
        ops.append(v2.RandomHorizontalFlip())
    if config.colour_jitter > 0:
        s = config.colour_jitter
        ops += [
            v2.RandomApply([v2.ColorJitter(s, s, s / 2, s / 4)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(ops)


class TwoViews:
    """A per-sample transform giving two independent views, stacked: (2, C, H, W)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])
