"""Yang et al.: fine classes survive training on coarse labels (paper 003).

Read back from the store at the penultimate probed layer (the last one) of each
arch and the last probe epoch, per dataset (hierarchy) and seed: the
Cluster-and-Linear-Probe accuracy on the fine (original) classes, the linear
probe trained on the fine classes, and from the stored class distance matrix
the mean squared distance ratio of the paper's appendix B, MSDR = mean D[i, j]
over fine classes i != j of one superclass / mean D[i, i] (1: the superclass
collapsed, above 1: its fine classes stay apart).
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

PAPER = "Yang et al. (2023)"
CLAIM = (
    "Trained on coarse labels only, the last-layer representation keeps the original classes "
    "apart: clustering each superclass and training a linear probe on the cluster ids (CLP) "
    "scores on the original test labels about as well as a linear probe trained on them "
    "(93% on Coarse CIFAR-10, ResNet-18), and merging the classes at random (Random Coarse) "
    "keeps the same fine-grained structure."
)
TOLERANCE = 0.05  # CLP may trail the fine-label probe by this much (accuracy) and still count


def msdr(distances: pd.DataFrame, superclass_of: dict[int, int]) -> float:
    """Mean D[i, j] over i != j in one superclass / mean D[i, i], from ``class_distance`` rows."""
    pairs = distances.scope.str.split(",", expand=True).astype(int)
    same = pairs[0].map(superclass_of) == pairs[1].map(superclass_of)
    diagonal = pairs[0] == pairs[1]
    return float(distances.value[same & ~diagonal].mean() / distances.value[diagonal].mean())


def penultimate_rows(store: EmbeddingStore, experiment_id: str) -> pd.DataFrame:
    """The CLP rows of ``experiment_id`` at each arch's last layer and the last probe epoch."""
    metrics = store.read(
        S.METRICS,
        columns=["dataset_id", "arch", "seed", "epoch", "layer", "scope", "metric", "value"],
        filter=where(
            experiment_id=experiment_id,
            method="representation",
            metric=["clp_accuracy", "linear_probe_fine", "class_distance"],
        ),
    ).to_pandas()
    if metrics.empty:
        raise ValueError(
            f"experiment {experiment_id!r} has no CLP rows; add clp to its "
            "metrics.representation and run it"
        )
    last = metrics.arch.map(lambda arch: layer_order(arch)[-1])
    return metrics[(metrics.layer == last) & (metrics.epoch == metrics.epoch.max())]


def finding(store: EmbeddingStore, experiment_id: str) -> Finding:
    rows = penultimate_rows(store, experiment_id)
    runs = store.read(
        S.RUNS,
        columns=["dataset_id", "dataset", "hierarchy"],
        filter=where(experiment_id=experiment_id),
    ).to_pandas()
    names = {r.dataset_id: f"{r.dataset}/{r.hierarchy}" for r in runs.itertuples()}
    measured, within = [], []
    for (dataset_id, arch), at in rows.groupby(["dataset_id", "arch"]):
        label = f"{names.get(dataset_id, dataset_id)} {arch} {layer_order(arch)[-1]}"
        per_seed = at[at.metric != "class_distance"].pivot_table(
            index="seed", columns="metric", values="value"
        )
        clp, fine = per_seed.clp_accuracy.to_numpy(), per_seed.linear_probe_fine.to_numpy()
        measured += [
            Measured.of(f"{label} CLP accuracy (fine labels)", clp),
            Measured.of(f"{label} linear probe on fine labels", fine),
        ]
        within.append(clp.mean() >= fine.mean() - TOLERANCE)
        samples = store.read(
            S.SAMPLES, columns=["subclass", "superclass"], filter=where(dataset_id=dataset_id)
        ).to_pandas()
        superclass_of = dict(zip(samples.subclass, samples.superclass, strict=True))
        distances = at[at.metric == "class_distance"]
        ratios = [msdr(d, superclass_of) for _, d in distances.groupby("seed")]
        if ratios:
            measured.append(Measured.of(f"{label} MSDR (1: collapsed)", np.asarray(ratios)))
    rule = (
        f"holds when, on every hierarchy of the study, the mean over seeds of CLP accuracy is "
        f"at most {TOLERANCE:.2f} below that of the linear probe trained on the fine labels, "
        "at the penultimate layer (the conjunction over coarse and random-coarse)."
    )
    return Finding("clp", PAPER, CLAIM, tuple(measured), bool(within) and all(within), rule)
