"""Intraclass clustering predicts generalisation (Carbonnelle & De Vleeschouwer, ICLR 2021).

The study trains one run per grid point (``grid:``) and seed, measures c1-c4 on
each run's training split (the intraclass stage) and its superclass test
accuracy (the ``runs`` table). Per dataset and seed, the granulated Kendall
coefficient of each measure against test accuracy is taken over the grid's
runs; the finding reports its mean ± sd over seeds.
"""

from __future__ import annotations

import numpy as np

from jobs.grid import GRID_AXES, grid_values
from services.findings import Finding, Measured
from services.metrics.intraclass import granulated_kendall
from storage import schema as S
from storage.filters import where

PAPER = "Carbonnelle & De Vleeschouwer (ICLR 2021)"
CLAIM = (
    "intraclass clustering measured on the training data (c1-c4) correlates positively "
    "with test accuracy across hyper-parameter settings: granulated Kendall coefficients "
    "of 0.70-0.84"
)
RULE = "the mean granulated Kendall coefficient (over seeds) of every measure is above 0"


def coefficients(store, experiment_id: str) -> dict[str, dict[tuple[str, int], float]]:
    """``{measure: {(dataset_id, seed): granulated Kendall vs test accuracy}}`` over the grid."""
    spec_json = (
        store.read(S.EXPERIMENTS, columns=["spec"], filter=where(experiment_id=experiment_id))
        .column("spec")
        .to_pylist()
    )
    if not spec_json:
        raise ValueError(f"experiment {experiment_id!r} is not in the store; run its spec first")
    points = grid_values(spec_json[0])
    if not points:
        raise ValueError(
            f"experiment {experiment_id!r} has no grid; the intraclass study needs one"
        )
    runs = store.read(
        S.RUNS,
        columns=["run_id", "dataset_id", "arch", "seed", "test_accuracy"],
        filter=where(experiment_id=experiment_id),
    ).to_pandas()
    metrics = store.read(
        S.METRICS,
        columns=["run_id", "metric", "value"],
        filter=where(experiment_id=experiment_id, method="intraclass"),
    ).to_pandas()
    if metrics.empty:
        raise ValueError(
            f"experiment {experiment_id!r} stored no intraclass measures; set "
            "metrics.intraclass in its spec"
        )
    values = metrics.pivot_table(index="run_id", columns="metric", values="value")
    table = runs.join(values, on="run_id", how="inner")
    axes = [a for a in GRID_AXES if any(a in p for p in points.values())]
    out: dict[str, dict[tuple[str, int], float]] = {}
    for (dataset_id, seed), group in table.groupby(["dataset_id", "seed"]):
        H = [[points[arch][a] for a in axes] for arch in group["arch"]]
        for measure in values.columns:
            total, _ = granulated_kendall(group[measure], group["test_accuracy"], H)
            out.setdefault(measure, {})[(dataset_id, int(seed))] = total
    return out


def finding(store, experiment_id: str) -> Finding:
    per_measure = coefficients(store, experiment_id)
    measured = tuple(
        Measured.of(f"granulated Kendall of {m} vs test accuracy", list(v.values()))
        for m, v in sorted(per_measure.items())
    )
    accuracy = store.read(
        S.RUNS, columns=["seed", "test_accuracy"], filter=where(experiment_id=experiment_id)
    ).to_pandas()
    spread = accuracy.groupby("seed")["test_accuracy"].agg(lambda a: a.max() - a.min())
    measured += (Measured.of("test accuracy range over the grid", spread.to_numpy()),)
    holds = bool(measured) and all(
        np.isfinite(m.mean) and m.mean > 0 for m in measured[: len(per_measure)]
    )
    return Finding(
        study="intraclass",
        paper=PAPER,
        claim=CLAIM,
        measured=measured,
        holds=holds,
        rule=RULE,
    )


__all__ = ["coefficients", "finding"]
