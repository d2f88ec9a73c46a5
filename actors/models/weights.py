"""Start a model from a local weights file: a state_dict or a full checkpoint.

Nothing is downloaded. A full checkpoint is a dict holding the state_dict
under one of :data:`CHECKPOINT_ENTRIES` (stratalens' own checkpoints hold it
under ``model``, and the EMA weights under ``ema``); ``path#entry`` picks an
entry by name. Prefixes that wrappers add (``module.`` from DDP,
``_orig_mod.`` from ``torch.compile``) are removed. Files are read with
``weights_only=True`` (no code runs) and memory-mapped where possible.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from actors.models.layers import ModelConfig, head_name
from actors.models.registry import ModelError

CHECKPOINT_ENTRIES = ("state_dict", "model", "model_state_dict", "module", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
OPTIONAL_BUFFERS = ("num_batches_tracked",)  # absent from some older checkpoints


def _split(weights: str) -> tuple[str, str | None]:
    """``path#entry`` -> (path, entry); a file whose own name holds ``#`` is taken whole."""
    if "#" in weights and not Path(weights).expanduser().is_file():
        path, _, entry = weights.rpartition("#")
        return path, entry
    return weights, None


def read_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """The state_dict held by ``weights`` (``path`` or ``path#entry``), on the CPU."""
    path, entry = _split(weights)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(
            f"weights file {path} does not exist; give the path of a local state_dict "
            "or checkpoint (nothing is downloaded)"
        )
    try:
        try:
            data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) file cannot be memory-mapped
            data = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"weights file {path} cannot be read as a PyTorch state_dict or checkpoint "
            f"({reason}); save it with torch.save(model.state_dict(), path)"
        ) from None
    state = _pick_entry(data, path, entry)
    return {_strip(key): value for key, value in state.items()}


def _pick_entry(data, path: str, entry: str | None) -> dict:
    if not isinstance(data, dict):
        raise ModelError(
            f"weights file {path} holds a {type(data).__name__}, not a state_dict; "
            "save model.state_dict() instead"
        )
    if entry is not None:
        if not isinstance(data.get(entry), dict):
            raise ModelError(
                f"weights file {path} has no state_dict entry {entry!r}; its entries are "
                f"{sorted(k for k, v in data.items() if isinstance(v, dict))}"
            )
        return data[entry]
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data
    for name in CHECKPOINT_ENTRIES:
        if isinstance(data.get(name), dict):
            return data[name]
    raise ModelError(
        f"weights file {path} is neither a state_dict nor a checkpoint with one of "
        f"{list(CHECKPOINT_ENTRIES)}; write the path as {path}#ENTRY to pick an entry"
    )


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def fit_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """``state`` restricted to what ``model`` loads; ModelError naming the first misfit.

    Tensors are compared in the model's order: the first one missing from the
    file or of another shape is named, then the first one the model lacks.
    """
    own = model.state_dict()
    head = head_name(model)
    skipped = ()
    if not config.load_head and head is not None:
        skipped = tuple(key for key in own if key.startswith(f"{head}."))
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    where = f"weights file {_split(config.weights)[0]} does not fit arch {config.name!r}"
    for key, tensor in own.items():
        if key in skipped:
            continue
        if key not in state:
            if key.rsplit(".", 1)[-1] in OPTIONAL_BUFFERS:
                continue
            raise ModelError(
                f"{where}: it lacks tensor {key!r}; use weights saved from this arch "
                "(with the same options)"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            fix = (
                "set load_head: false to keep the model's own head"
                if head and key.startswith(f"{head}.")
                else "use weights saved from this arch (with the same options)"
            )
            raise ModelError(
                f"{where}: tensor {key!r} is {tuple(state[key].shape)} in the file but "
                f"{tuple(tensor.shape)} in the model; {fix}"
            )
    extra = [key for key in state if key not in own]
    if extra:
        raise ModelError(
            f"{where}: the model has no tensor {extra[0]!r} ({len(extra)} such in the file); "
            "use weights saved from this arch (with the same options and loss)"
        )
    return state


def load_weights(model: nn.Module, config: ModelConfig) -> None:
    """Copy ``config.weights`` into ``model`` (checked first; a meta model is only checked)."""
    state = fit_state_dict(model, read_state_dict(config.weights), config)
    if any(p.is_meta for p in model.parameters()):
        return
    model.load_state_dict(state, strict=False)
