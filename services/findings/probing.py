"""Nguyen & Kornblith: subclasses cluster better under a shuffled hierarchy (papers 000/001).

Read back from the store at the penultimate probed layer (the last one) of each
arch, at the last probe epoch and the smallest overclustering factor: the AMI
of Ward (else the first method) on the shuffled and the natural hierarchies,
and the purity of every Table B.1 method stored on the natural hierarchies.
A seed's score is its mean over superclasses (and over datasets of the same
kind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from services.findings import Finding, Measured
from services.plots import layer_order
from storage import schema as S
from storage.filters import where

if TYPE_CHECKING:
    from storage import EmbeddingStore

PAPER = "Nguyen & Kornblith (2024)"
CLAIM = (
    "Subclasses are recovered far better (higher AMI) at the penultimate layer when each "
    "superclass groups unrelated subclasses (shuffled hierarchy) than when it groups alike "
    "ones (natural hierarchy); and in Table B.1 single linkage gives the lowest purity "
    "(~0.27, against ~0.37 for k-means and Ward)."
)
TABLE_B1 = ("kmeans", "ward", "average", "complete", "single")


def penultimate_scores(store: EmbeddingStore, experiment_id: str) -> pd.DataFrame:
    """Per (arch, kind, method, metric, seed): the score at the arch's last probed layer.

    ``kind`` is ``shuffled`` for hierarchies whose name says so, else ``natural``;
    values are means over superclasses and datasets of the kind, at the last
    probe epoch and the smallest overclustering factor.
    """
    runs = store.read(
        S.RUNS, columns=["dataset_id", "hierarchy"], filter=where(experiment_id=experiment_id)
    ).to_pandas()
    kinds = {
        d: "shuffled" if "shuffled" in h else "natural"
        for d, h in zip(runs.dataset_id, runs.hierarchy, strict=True)
    }
    metrics = store.read(
        S.METRICS,
        columns=["dataset_id", "arch", "seed", "epoch", "layer", "method"]
        + ["overclustering_factor", "metric", "value"],
        filter=where(experiment_id=experiment_id, metric=["ami", "purity"]),
    ).to_pandas()
    if metrics.empty:
        raise ValueError(
            f"experiment {experiment_id!r} has no AMI or purity scores; run its spec to the end"
        )
    last = metrics.arch.map(lambda arch: layer_order(arch)[-1])
    metrics = metrics[
        (metrics.layer == last)
        & (metrics.epoch == metrics.epoch.max())
        & (metrics.overclustering_factor == metrics.overclustering_factor.min())
    ]
    metrics = metrics.assign(kind=metrics.dataset_id.map(kinds))
    return (
        metrics.groupby(["arch", "kind", "method", "metric", "seed"])["value"].mean().reset_index()
    )


def finding(store: EmbeddingStore, experiment_id: str) -> Finding:
    scores = penultimate_scores(store, experiment_id)
    methods = set(scores.method)
    headline = "ward" if "ward" in methods else sorted(methods)[0]
    measured, shuffled_above, single_lowest = [], [], []
    for arch in sorted(scores.arch.unique()):
        layer = layer_order(arch)[-1]
        at = scores[scores.arch == arch]

        def values(kind, method, metric, at=at):
            rows = at[(at.kind == kind) & (at.method == method) & (at.metric == metric)]
            return rows.sort_values("seed").value.to_numpy()

        ami = {kind: values(kind, headline, "ami") for kind in ("natural", "shuffled")}
        for kind in ("natural", "shuffled"):
            if len(ami[kind]):
                measured.append(Measured.of(f"{arch} {layer} {headline} AMI, {kind}", ami[kind]))
        if len(ami["natural"]) and len(ami["shuffled"]):
            shuffled_above.append(ami["shuffled"].mean() > ami["natural"].mean())
        purity = {m: values("natural", m, "purity") for m in TABLE_B1 if m in methods}
        purity = {m: v for m, v in purity.items() if len(v)}
        for method, v in purity.items():
            measured.append(Measured.of(f"{arch} {layer} {method} purity, natural (B.1)", v))
        if "single" in purity and len(purity) > 1:
            means = {m: v.mean() for m, v in purity.items()}
            single_lowest.append(min(means, key=means.get) == "single")
    if not shuffled_above:
        raise ValueError(
            f"experiment {experiment_id!r} needs a natural and a shuffled hierarchy for the "
            "probing study; add both to its datasets"
        )
    holds = bool(np.all(shuffled_above))
    if single_lowest:
        b1 = "holds" if all(single_lowest) else "does not hold"
        b1_note = f"Table B.1's direction (single linkage the lowest purity) {b1} here"
    else:
        b1_note = "Table B.1 was not measured (single linkage and another method are needed)"
    rule = (
        f"holds when the mean over seeds of {headline} AMI at the penultimate layer is higher "
        f"for the shuffled hierarchy than for the natural one (every arch); {b1_note}, "
        "reported beside the verdict, not part of it."
    )
    return Finding("probing", PAPER, CLAIM, tuple(measured), holds, rule)
