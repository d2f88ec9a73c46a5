"""Training objectives on superclass labels, and the head changes some of them need.

- ``softmax_ce``: softmax cross-entropy;
- ``squared_error``: mean squared error against one-hot targets;
- ``sigmoid_ce``: a sigmoid cross-entropy per class against one-hot targets,
  summed over classes, averaged over the batch;
- ``label_smoothing``: softmax cross-entropy against targets smoothed by
  ``label_smoothing`` (default 0.1);
- ``cosine_softmax``: softmax cross-entropy on the cosine similarities of the
  features and the class weights, divided by a temperature (the head becomes
  a :class:`CosineLinear`, without bias);
- ``supcon``, ``vicreg``, ``simclr``: two augmented views of each image through a
  projector head (:mod:`actors.ssl`); ``vicreg`` and ``simclr`` use no label.

Dropout before the head (``dropout`` > 0) is a forward pre-hook on the head,
so the model's module names and state_dict keys stay torchvision's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from actors.models import ModelError, head_name
from actors.ssl import TWO_VIEW_LOSSES

HEAD_LOSSES = ("softmax_ce", "squared_error", "sigmoid_ce", "label_smoothing", "cosine_softmax")
LOSSES = (*HEAD_LOSSES, *TWO_VIEW_LOSSES)
DEFAULT_LABEL_SMOOTHING = 0.1
DEFAULT_COSINE_TEMPERATURE = 0.05


class CosineLinear(nn.Module):
    """``cos(x, w_k) / temperature`` for every class k: (B, in) -> (B, out)."""

    def __init__(self, in_features: int, out_features: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1)) / self.temperature


def loss_function(
    name: str, *, label_smoothing: float = DEFAULT_LABEL_SMOOTHING
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(logits (B, K), superclass int64 (B,)) -> scalar`` for loss ``name``."""
    if name == "squared_error":
        return lambda logits, y: F.mse_loss(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    if name == "sigmoid_ce":

        def sigmoid_ce(logits, y):
            target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
            summed = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            return summed / len(y)

        return sigmoid_ce
    if name == "label_smoothing":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if name in ("softmax_ce", "cosine_softmax"):
        return F.cross_entropy
    if name in TWO_VIEW_LOSSES:
        raise ValueError(f"loss {name!r} compares two views: use actors.ssl.two_view_loss")
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")


def _head(model: nn.Module, arch: str, why: str) -> tuple[str, nn.Linear]:
    name = head_name(model)
    if name is None:
        raise ModelError(f"arch {arch!r} has no linear classification head, which {why} needs")
    return name, model.get_submodule(name)


def use_cosine_head(model: nn.Module, arch: str, temperature: float) -> None:
    """Replace the head (the last ``nn.Linear``) by a :class:`CosineLinear` in place."""
    name, head = _head(model, arch, "loss cosine_softmax")
    model.set_submodule(name, CosineLinear(head.in_features, head.out_features, temperature))


def add_head_dropout(model: nn.Module, arch: str, p: float) -> None:
    """Dropout with probability ``p`` on the head's input, in training mode only."""
    _, head = _head(model, arch, "training.dropout")

    def dropout(module, inputs):
        return (F.dropout(inputs[0], p, module.training), *inputs[1:])

    head.register_forward_pre_hook(dropout)


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> None:
    """PyTorch's BN ``momentum`` (1 - the decay rate; the probing paper's decay 0.99 is 0.01)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
