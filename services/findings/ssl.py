"""Ben-Shaul et al. (2023): self-supervised training clusters the data by semantic classes.

A ``study: ssl`` experiment trains with a label-free two-view loss (``vicreg`` or
``simclr``) and stores NCC accuracy (train-split class centres, held-out
samples) and CDNV of every probed layer for the subclass and superclass labels
at several probe epochs (``metrics.representation: [ncc, cdnv]``). The finding
compares the deepest probed layer over training (first vs last probe epoch,
seed by seed) and, at the last probe epoch, the deepest against the shallowest
probed layer (mean over seeds), for both label levels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from actors.ssl import LABEL_FREE_LOSSES
from services.findings import Finding, Measured
from services.plots import layer_order
from storage import schema as S
from storage.filters import where

if TYPE_CHECKING:
    from storage import EmbeddingStore

PAPER = "Ben-Shaul et al. (2023)"
CLAIM = (
    "Learned representations align with semantic classes across various hierarchical "
    "levels, and this alignment increases during training and when moving deeper into "
    "the network."
)
RULE = (
    "for both subclass and superclass labels, the deepest probed layer's NCC test accuracy "
    "is higher at the last probe epoch than at the first for every seed, and at the last "
    "probe epoch the mean over seeds is higher at the deepest probed layer than at the "
    "shallowest"
)
LEVELS = ("subclass", "superclass")


def finding(store: EmbeddingStore, experiment_id: str) -> Finding:
    rows = store.read(
        S.METRICS,
        columns=["dataset_id", "arch", "seed", "epoch", "layer", "metric", "value"],
        filter=where(experiment_id=experiment_id, method="representation"),
    ).to_pandas()
    wanted = {f"{m}_{level}" for m in ("ncc", "cdnv") for level in LEVELS}
    rows = rows[rows.metric.isin(wanted)]
    if not {f"ncc_{level}" for level in LEVELS} <= set(rows.metric):
        raise ValueError(
            f"experiment {experiment_id!r} stores no NCC accuracies; a study: ssl spec needs "
            "metrics.representation: [ncc, cdnv]"
        )
    losses = _losses(store, experiment_id)
    groups = sorted(rows.groupby(["dataset_id", "arch"]), key=lambda g: g[0])
    measured: list[Measured] = []
    holds = bool(losses) and losses <= set(LABEL_FREE_LOSSES)
    for (dataset_id, arch), group in groups:
        prefix = f"{dataset_id} {arch}: " if len(groups) > 1 else ""
        found, ok = _one_model(group, arch, prefix)
        measured += found
        holds = holds and ok
    return Finding(
        study="ssl",
        paper=PAPER,
        claim=CLAIM,
        measured=tuple(measured),
        holds=holds,
        rule=f"{RULE}; training loss {'/'.join(sorted(losses))} "
        f"(the finding needs one that uses no label: {' or '.join(LABEL_FREE_LOSSES)})",
    )


def _one_model(rows, arch: str, prefix: str) -> tuple[list[Measured], bool]:
    """Measured values and the verdict for one (dataset, arch) of the study."""
    layers = [layer for layer in layer_order(arch) if layer in set(rows.layer)]
    first_layer, deepest = layers[0], layers[-1]
    epochs = sorted(int(e) for e in rows.epoch.unique())
    start, end = epochs[0], epochs[-1]
    table = rows.pivot_table(index=["metric", "epoch", "layer"], columns="seed", values="value")

    def per_seed(metric: str, epoch: int, layer: str) -> np.ndarray:
        return table.loc[(metric, epoch, layer)].to_numpy(dtype=np.float64)

    measured, holds = [], start < end
    for level in LEVELS:
        ncc = f"ncc_{level}"
        before, after = per_seed(ncc, start, deepest), per_seed(ncc, end, deepest)
        shallow = per_seed(ncc, end, first_layer)
        measured += [
            Measured.of(f"{prefix}NCC {level}, {deepest}, epoch {start}", before),
            Measured.of(f"{prefix}NCC {level}, {deepest}, epoch {end}", after),
            Measured.of(f"{prefix}NCC {level}, {first_layer}, epoch {end}", shallow),
        ]
        holds = holds and bool((after > before).all() and after.mean() > shallow.mean())
        cdnv = f"cdnv_{level}"
        if cdnv in set(rows.metric):
            for epoch in (start, end):
                label = f"{prefix}CDNV {level}, {deepest}, epoch {epoch}"
                measured.append(Measured.of(label, per_seed(cdnv, epoch, deepest)))
    return measured, holds


def _losses(store: EmbeddingStore, experiment_id: str) -> set[str]:
    runs = store.read(S.RUNS, columns=["loss"], filter=where(experiment_id=experiment_id))
    return set(runs.column("loss").to_pylist())
