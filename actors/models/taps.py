"""Read the outputs of named layers during a forward pass, reduced to (batch, features).

Conv maps (batch, channels, h, w) are global-average-pooled (or max-pooled,
``pool="max"``) to (batch, channels), as in the probing paper; token
sequences (batch, tokens, dim) keep the CLS token (or their mean,
``tokens="mean"``); anything else is flattened.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

POOLS = ("avg", "max")
TOKEN_READOUTS = ("cls", "mean")
LOGITS = "__logits__"  # the output name the model's own output is returned under


def reduce_output(
    output: torch.Tensor, *, pool: str = "avg", tokens: str = "cls", nhwc: bool = False
) -> torch.Tensor:
    """(B, ...) activations -> float32 (B, d) as stored.

    Parameters
    ----------
    output : Tensor
        (B, C, H, W) conv maps ((B, H, W, C) when ``nhwc``), (B, T, D) token
        sequences, or (B, ...) anything else.
    pool : {"avg", "max"}
        Global pooling of conv maps.
    tokens : {"cls", "mean"}
        Token sequences: the first (CLS) token, or the mean over tokens.
    """
    output = output.detach()
    if output.ndim == 4:
        dims = (1, 2) if nhwc else (2, 3)
        output = output.amax(dim=dims) if pool == "max" else output.mean(dim=dims)
    elif output.ndim == 3:
        output = output[:, 0] if tokens == "cls" else output.mean(dim=1)
    return output.flatten(1).float()


class LayerTaps:
    """Forward hooks that record each probed layer's output as (batch, features).

    Layers are module paths (``model.get_submodule``). Use as a context manager
    so the hooks are removed.

    >>> with LayerTaps(model, ["conv1", "fc1"]) as taps:
    ...     model(x)
    ...     features = taps.outputs  # {"conv1": (B, C), "fc1": (B, 128)}
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str] | tuple[str, ...],
        *,
        pool: str = "avg",
        tokens: str = "cls",
    ):
        self.model = model
        self.layers = tuple(layers)
        self.pool, self.tokens = pool, tokens
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
            value = reduce_output(output, pool=self.pool, tokens=self.tokens)
            if value.data_ptr() == output.data_ptr():
                # a (B, d) output is kept as is: copy it, or an in-place ReLU that runs
                # next (a Linear's pre-activation) would overwrite what was recorded
                value = value.clone()
            self.outputs[name] = value

        return record


class FeatureReader:
    """``reader(x) -> (logits, {layer: float32 (B, d)})`` for one model and layer set.

    Parameters
    ----------
    model : nn.Module
    layers : sequence of str
        Module paths (``taps="hooks"``) or graph node names / module prefixes
        of ``torchvision.models.feature_extraction`` (``taps="fx"``).
    taps : {"hooks", "fx"}
    pool, tokens, nhwc
        How outputs are reduced; see :func:`reduce_output`.

    Notes
    -----
    With ``fx`` the model is traced once (``create_feature_extractor``); the
    traced module shares the model's parameters, so it sees training updates.
    A probed node that an in-place operation later overwrites (the input of an
    in-place ReLU, such as a pre-activation ``layer4.1.add``) is copied first,
    so it keeps its own value; other nodes cost nothing extra.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: tuple[str, ...],
        *,
        taps: str = "hooks",
        pool: str = "avg",
        tokens: str = "cls",
        nhwc: bool = False,
    ):
        self.model, self.layers, self.taps = model, tuple(layers), taps
        self.reduce = {"pool": pool, "tokens": tokens, "nhwc": nhwc}
        self._extractor = None
        if taps == "fx":
            from torchvision.models.feature_extraction import create_feature_extractor

            from actors.models.layers import graph_nodes

            output = graph_nodes(model)[-1]
            nodes = {layer: layer for layer in self.layers}
            self._output = nodes.setdefault(output, LOGITS)
            self._extractor = create_feature_extractor(model, return_nodes=nodes).eval()
            _copy_overwritten_outputs(self._extractor)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._extractor is None:
            with LayerTaps(self.model, self.layers, **_hook_reduce(self.reduce)) as taps:
                logits = self.model(x)
            return logits, {name: taps.outputs[name] for name in self.layers}
        if self.model.training:
            raise RuntimeError("FeatureReader reads models in evaluation mode; call .eval()")
        out = self._extractor(x)
        features = {name: reduce_output(out[name], **self.reduce) for name in self.layers}
        return out[self._output], features


IN_PLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


def _overwrites_input(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` modifies its first argument ``source`` in place."""
    if not node.args or node.args[0] is not source:
        return False
    if node.op == "call_module":
        return getattr(modules[node.target], "inplace", False) is True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        in_place_name = name.endswith("_") and not name.startswith("__")
        in_place_operator = node.target in IN_PLACE_OPERATORS
        return bool(node.kwargs.get("inplace")) or in_place_name or in_place_operator
    return False


def _copy_overwritten_outputs(extractor: fx.GraphModule) -> None:
    """Return a copy of each output node that a later in-place operation overwrites.

    The evaluation graph (the one in use) is edited in place and recompiled.
    """
    graph = extractor.graph
    modules = dict(extractor.named_modules())
    output = next(n for n in graph.nodes if n.op == "output")
    returned = dict(output.args[0])
    changed = False
    for name, node in list(returned.items()):
        if any(_overwrites_input(user, node, modules) for user in node.users):
            with graph.inserting_after(node):
                copy = graph.call_method("clone", (node,))
            returned[name] = copy
            changed = True
    if changed:
        output.args = (returned,)
        extractor.recompile()


def _hook_reduce(reduce: dict) -> dict:
    return {"pool": reduce["pool"], "tokens": reduce["tokens"]}
