"""Capture the outputs of named layers during a forward pass."""

from __future__ import annotations

import torch
from torch import nn


class LayerTaps:
    """Forward hooks that record each probed layer's output as (batch, features).

    Conv maps (batch, channels, h, w) are global-average-pooled to (batch, channels),
    as in the probing paper. Use as a context manager so the hooks are removed.

    >>> with LayerTaps(model, ["conv1", "fc1"]) as taps:
    ...     model(x)
    ...     features = taps.outputs  # {"conv1": (B, C), "fc1": (B, 128)}
    """

    def __init__(self, model: nn.Module, layers: list[str] | tuple[str, ...]):
        self.model = model
        self.layers = tuple(layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> LayerTaps:
        for name in self.layers:
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            output = output.detach()
            if output.ndim == 4:
                output = output.mean(dim=(2, 3))
            self.outputs[name] = output.flatten(1).float()

        return record
