"""Optimisers, the learning-rate schedule and the EMA of weights the trainer uses."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    betas: tuple[float, float],
) -> torch.optim.Optimizer:
    """SGD (momentum, optionally Nesterov) or AdamW over every parameter of ``model``."""
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay
        )
    if name != "sgd":
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
    )


def cosine_warmup_scale(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """The lr multiplier at ``step``: linear warm-up to 1, then a cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


class ModelEma:
    """An exponential moving average of a model's weights (parameters and buffers).

    After each optimiser step, ``update(model)`` sets every floating-point
    tensor to ``decay * ema + (1 - decay) * current``; integer buffers (BN
    batch counts) are copied. ``module`` is a full model in evaluation mode:
    it is what gets extracted when the spec asks for an EMA.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = self.module.state_dict()
        for key, value in model.state_dict().items():
            target = ema[key]
            if target.is_floating_point():
                target.lerp_(value.to(target.dtype), 1 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
