"""A spec's ``grid:``: hyper-parameter values whose cartesian product trains one run each.

``grid: {lr: [0.1, 0.03], width: [8, 16]}`` turns every ``archs`` item into
four items, one per grid point, each stored under its own arch key (the item's
key plus the point, e.g. ``small_cnn_lr0.03_w16``), so every stage (extract,
cluster, score) sees an ordinary arch. Training hyper-parameters override the
spec's ``training`` section for that key's runs; ``width`` becomes the arch
option of the same name (``small_cnn``, ``tiny_resnet``: models whose factory
takes it).

A run's hyper-parameters are recoverable from the store: its arch key names
them, and :func:`grid_values` re-expands the experiment's stored spec into
``{arch key: {hyper-parameter: value}}``.
"""

from __future__ import annotations

import itertools
import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.archs import ArchSpec

# hyper-parameter -> short label of the arch key; all but ``width`` are training fields
GRID_AXES = {
    "lr": "lr",
    "batch_size": "bs",
    "weight_decay": "wd",
    "dropout": "do",
    "augment": "aug",
    "epochs": "ep",
    "width": "w",
}
ARCH_OPTION_AXES = ("width",)


class GridSpec(BaseModel):
    """Values of each varied hyper-parameter; the runs are their cartesian product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: list[Annotated[float, Field(gt=0)]] | None = None
    batch_size: list[Annotated[int, Field(ge=1)]] | None = None
    weight_decay: list[Annotated[float, Field(ge=0)]] | None = None
    dropout: list[Annotated[float, Field(ge=0, lt=1)]] | None = None
    augment: list[bool] | None = Field(
        None, description="random crops (padding 1/8 of the side) and horizontal flips"
    )
    epochs: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="each run is probed after its own last epoch"
    )
    width: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="the arch option `width` (small_cnn, tiny_resnet)"
    )

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: object) -> object:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in GRID_AXES]
            if unknown:
                raise ValueError(
                    f"unknown hyper-parameter(s) {unknown}; a grid varies {list(GRID_AXES)}"
                )
        return data

    @model_validator(mode="after")
    def _values(self) -> GridSpec:
        given = {name: getattr(self, name) for name in GRID_AXES}
        for name, values in given.items():
            if values is None:
                continue
            if not values:
                raise ValueError(f"{name} is an empty list; give it at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} {values} repeats a value; list each value once")
        if all(v is None for v in given.values()):
            raise ValueError(
                f"grid varies no hyper-parameter; list values for some of {list(GRID_AXES)}"
            )
        return self

    @property
    def axes(self) -> dict[str, list]:
        """The varied hyper-parameters and their values, in :data:`GRID_AXES` order."""
        return {n: list(getattr(self, n)) for n in GRID_AXES if getattr(self, n) is not None}

    def points(self) -> list[dict]:
        """Every combination of values, the last axis varying fastest."""
        axes = self.axes
        return [
            dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())
        ]


def _label(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}".replace("+", "")
    return str(value)


def point_key(base_key: str, point: dict) -> str:
    """The arch key of ``point`` of the item stored under ``base_key``."""
    return base_key + "".join(f"_{GRID_AXES[n]}{_label(v)}" for n, v in point.items())


def training_overrides(point: dict) -> dict:
    """The ``training`` fields a grid point sets."""
    return {n: v for n, v in point.items() if n not in ARCH_OPTION_AXES}


def expand_arch(arch: ArchSpec, point: dict) -> ArchSpec:
    """``arch`` at ``point``: its own key, the point's arch options set."""
    options = {**arch.options, **{n: point[n] for n in ARCH_OPTION_AXES if n in point}}
    return arch.model_copy(update={"key": point_key(arch.stored_key, point), "options": options})


def expand(archs: list[ArchSpec], grid: GridSpec | None) -> list[tuple[ArchSpec, dict]]:
    """``(arch item, grid point)`` for every item and point (the point is {} without a grid)."""
    if grid is None:
        return [(arch, {}) for arch in archs]
    return [(expand_arch(arch, p), p) for arch in archs for p in grid.points()]


def grid_values(spec_json: str) -> dict[str, dict]:
    """``{arch key: {hyper-parameter: value}}`` of a stored spec (empty without a grid)."""
    data = json.loads(spec_json)
    if not data.get("grid"):
        return {}
    grid = GridSpec.model_validate(data["grid"])
    return {arch.stored_key: point for arch, point in expand(stored_archs(data), grid)}


def stored_archs(data: dict) -> list[ArchSpec]:
    """The ``archs`` items of a stored spec, rebuilt without validation (a weights file
    need not exist any more)."""
    return [
        ArchSpec.model_construct(name=a) if isinstance(a, str) else ArchSpec.model_construct(**a)
        for a in data.get("archs", [])
    ]
