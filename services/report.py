"""Summaries of a stored experiment: tables for the terminal, an HTML + PNG report.

Everything is read back from the store (``runs``, ``metrics``, ``pairs``, and
``clusterings`` with ``samples`` for the cluster galleries), so a report can be
rebuilt at any time without re-running the study. Every summary keys on the
probe epoch: scores of different epochs are never averaged together.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from services.findings import finding, finding_html
from services.gallery import cluster_gallery, gallery_html
from services.plots import (
    compare_figures,
    consistency_figures,
    figure_vs_epoch,
    figure_vs_layer,
    layer_matrix,
    layer_order,
    png_image,
)
from storage import EmbeddingStore, StoreError
from storage import schema as S
from storage.filters import where

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    # turns one figure, and the name it is saved under, into the HTML that shows it
    Render = Callable[[Figure, str], str]

CLUSTER_METRICS = ("ami", "purity")  # drawn against layer and epoch for every method
REPRESENTATION_METRICS = ("ncc_subclass", "ncc_superclass")  # drawn once, method-independent
REPRESENTATION = "representation"  # the ``method`` of per-layer (not per-clustering) rows
PER_RUN_METHODS = ("intraclass",)  # one value per run (layer "all"): the study's finding


def _per_layer(metrics) -> pd.DataFrame:
    """The per-layer ``metrics`` rows (the per-run intraclass measures left out)."""
    metrics = metrics.to_pandas()
    return metrics[~metrics.method.isin(PER_RUN_METHODS)]


PROFILE_KEYS = ["dataset_id", "arch", "epoch", "layer"]
# Rows of the pipeline's cross-seed stage; `stratalens compare` rows (keys "compare/...")
# pair other sides (archs, experiments, epochs) and are drawn by compare_figures alone.
SEED_PAIRS = " AND NOT unit_key LIKE 'compare/%'"
EMBEDDING = "embedding"  # the ``method`` of CKA / mknn rows (jobs.compare.EMBEDDING_METHOD)


def runs_frame(store: EmbeddingStore, experiment_id: str) -> pd.DataFrame:
    """The finished runs of ``experiment_id``, sorted by dataset, arch and seed."""
    runs = store.read(S.RUNS, filter=where(experiment_id=experiment_id)).to_pandas()
    if runs.empty:
        raise StoreError(
            f"experiment {experiment_id!r} has no finished runs in {store.root}; "
            "run `stratalens ls` to see what the store holds"
        )
    return runs.drop(columns=[S.UNIT_KEY]).sort_values(["dataset_id", "arch", "seed"])


def layer_profile(
    store: EmbeddingStore, experiment_id: str, *, method: str = "ward", factor: int | None = None
) -> pd.DataFrame:
    """Per (dataset, arch, probe epoch, layer): mean and sd over seeds of each score.

    A seed's score is its mean over scopes (superclasses). Columns: dataset_id,
    dataset, hierarchy, arch, epoch, layer, layer_index, n_seeds, method,
    overclustering_factor, and a ``<metric>_mean`` and ``<metric>_std`` for every
    clustering metric of ``method`` (``ami``, ``purity``, ...) and every
    representation metric (``ncc_subclass``, ``cdnv_superclass``, ...) stored.
    ``factor`` defaults to the smallest overclustering factor stored.
    """
    runs = runs_frame(store, experiment_id)
    metrics = _per_layer(store.read(S.METRICS, filter=where(experiment_id=experiment_id)))
    return _profile(metrics, runs, experiment_id, method, factor)


def consistency_matrix(
    store: EmbeddingStore,
    experiment_id: str,
    dataset_id: str,
    arch: str,
    *,
    epoch: int,
    method: str,
    factor: int,
    metric: str = "ari",
) -> tuple[list[str], np.ndarray]:
    """Layer x layer ``metric`` between seeds at one probe epoch.

    Returns the layers (input to output) and a float64 (n_layers, n_layers)
    matrix averaged over scopes and seed pairs, NaN where no pair is stored.
    """
    pairs = store.read(
        S.PAIRS,
        columns=["layer_a", "layer_b", "value"],
        filter=where(
            metric=metric,
            experiment_id=experiment_id,
            dataset_id=dataset_id,
            arch=arch,
            epoch=int(epoch),
            method=method,
            overclustering_factor=int(factor),
        )
        + SEED_PAIRS,
    ).to_pandas()
    return layer_matrix(pairs, layer_order(arch))


def write_report(store: EmbeddingStore, experiment_id: str, out_dir: str | Path) -> Path:
    """Write ``index.html`` and its PNG plots into ``out_dir``; returns the HTML path.

    The page holds the :func:`report_sections` of the experiment.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = report_sections(store, experiment_id, lambda fig, name: png_image(fig, out, name))
    page = out / "index.html"
    page.write_text(_PAGE.format(title=html.escape(experiment_id), body="\n".join(sections)))
    return page


def report_sections(store: EmbeddingStore, experiment_id: str, render: Render) -> list[str]:
    """The HTML sections of an experiment's report (and of its dashboard page).

    Per clustering method: AMI and purity against layer (a panel per probe
    epoch) and, with several probe epochs, against epoch (a line per layer);
    cross-seed heatmaps (a panel per epoch). Then NCC accuracy the same way,
    layers-of-A x layers-of-B heatmaps of compares and of the stage's CKA / mknn
    (:func:`compare_pairs`), and cluster galleries of the last probed layer at the
    last probe epoch.
    ``render(figure, name)`` gives the HTML of each figure.
    """
    runs = runs_frame(store, experiment_id)
    metrics = _per_layer(store.read(S.METRICS, filter=where(experiment_id=experiment_id)))
    pairs = store.read(
        S.PAIRS,
        columns=["dataset_id", "arch", "epoch", "method", "overclustering_factor", "metric"]
        + ["layer_a", "layer_b", "value"],
        filter=where(experiment_id=experiment_id) + SEED_PAIRS,
    ).to_pandas()
    methods = sorted(set(metrics.method) - {REPRESENTATION})
    epochs = sorted(int(e) for e in metrics.epoch.unique())
    several = len(epochs) > 1
    scopes = _scope_note(metrics)
    sections = [
        f"<h1>stratalens report: {html.escape(experiment_id)}</h1>",
        f"<p>probe epochs: {', '.join(map(str, epochs))}; seeds: "
        f"{', '.join(map(str, sorted(runs.seed.unique())))}; scores are means {scopes}, "
        "± 1 sd over seeds; no figure or table averages over epochs.</p>",
    ]
    found = finding(store, experiment_id)
    if found is not None:
        sections.append(finding_html(found))
    sections.append(_runs_html(runs))
    profile = None
    for method in methods:
        profile = _profile(metrics, runs, experiment_id, method, None)
        factor = int(profile.overclustering_factor.iloc[0])
        images = [
            (figure_vs_layer(profile, m, scopes), f"{m}_vs_layer_{method}") for m in CLUSTER_METRICS
        ]
        if several:
            images += [
                (figure_vs_epoch(profile, m, scopes), f"{m}_vs_epoch_{method}")
                for m in CLUSTER_METRICS
            ]
        images += [(fig, name) for name, fig in consistency_figures(pairs, runs, method, factor)]
        sections.append(
            f"<h2>{method} (k = subclasses x {factor})</h2>"
            + _images_html(images, render)
            + _profile_html(profile, _clustering_metrics(metrics, method))
        )
    if profile is not None and any(f"{m}_mean" in profile for m in REPRESENTATION_METRICS):
        images = [
            (figure_vs_layer(profile, m, ""), f"{m}_vs_layer") for m in REPRESENTATION_METRICS
        ]
        if several:
            images += [
                (figure_vs_epoch(profile, m, ""), f"{m}_vs_epoch") for m in REPRESENTATION_METRICS
            ]
        sections.append(
            "<h2>Nearest-class-centre accuracy (train class means, test samples)</h2>"
            + _images_html(images, render)
            + _profile_html(profile, REPRESENTATION_METRICS)
        )
    sections += _compare_html(store, experiment_id, methods, render)
    if methods:
        shown = "ward" if "ward" in methods else methods[0]
        factor = int(metrics.overclustering_factor[metrics.method == shown].min())
        sections.append(_galleries_html(store, experiment_id, runs, shown, factor, epochs[-1]))
    return sections


# -- summaries from frames already read -----------------------------------------
def _profile(
    metrics: pd.DataFrame,
    runs: pd.DataFrame,
    experiment_id: str,
    method: str,
    factor: int | None,
) -> pd.DataFrame:
    """:func:`layer_profile` of the ``metrics`` rows of one experiment."""
    clustered = metrics[metrics.method == method]
    if clustered.empty:
        ran = sorted(set(metrics.method) - {REPRESENTATION})
        raise StoreError(
            f"experiment {experiment_id!r} has no {method!r} scores; pick one of {ran}"
        )
    factors = sorted(int(f) for f in clustered.overclustering_factor.unique())
    factor = factors[0] if factor is None else factor
    if factor not in factors:
        raise StoreError(
            f"experiment {experiment_id!r} has no {method!r} scores at overclustering factor "
            f"{factor}; pick one of {factors}"
        )
    clustered = clustered[clustered.overclustering_factor == factor]
    representation = metrics[metrics.method == REPRESENTATION]
    per_seed = (
        pd.concat([clustered, representation])
        .groupby([*PROFILE_KEYS, "seed", "metric"])["value"]
        .mean()  # over scopes
        .unstack("metric")
    )
    grouped = per_seed.groupby(PROFILE_KEYS)
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["n_seeds"] = grouped.size()
    summary = summary.reset_index()
    names = runs.drop_duplicates("dataset_id").set_index("dataset_id")[["dataset", "hierarchy"]]
    summary = summary.join(names, on="dataset_id")
    summary["epoch"] = summary.epoch.astype(int)
    summary["layer_index"] = [
        layer_order(arch).index(layer)
        for arch, layer in zip(summary.arch, summary.layer, strict=True)
    ]
    summary["method"], summary["overclustering_factor"] = method, factor
    order = ["dataset_id", "arch", "epoch", "layer_index"]
    return summary.sort_values(order).reset_index(drop=True)


def _clustering_metrics(metrics: pd.DataFrame, method: str) -> tuple[str, ...]:
    """The clustering metrics stored for ``method``, those of ``CLUSTER_METRICS`` first."""
    stored = set(metrics.metric[metrics.method == method])
    return tuple(sorted(stored, key=lambda m: (m not in CLUSTER_METRICS, m)))


def _scope_note(metrics: pd.DataFrame) -> str:
    """What a clustering score is averaged over, for figure labels."""
    scopes = metrics.scope[metrics.method != REPRESENTATION]
    if scopes.str.startswith("superclass=").any():
        return "over superclasses"
    return "over the whole split (scope: all)"


def compare_pairs(store: EmbeddingStore, experiment_id: str, methods: list[str]) -> pd.DataFrame:
    """``pairs`` rows of ``stratalens compare`` with ``experiment_id`` on either side, and
    the score stage's CKA / mknn between seeds (method ``embedding``).

    Clustering scores keep one method (ward if stored) at its smallest factor; a row
    both sources hold (the same runs, epochs and layers) counts once.
    """
    ds = store.dataset(S.PAIRS)
    if ds is None or "experiment_b" not in ds.schema.names:  # no side-B keys: no compares
        return pd.DataFrame()
    pairs = store.read(
        S.PAIRS,
        filter=f"({where(experiment_id=experiment_id)} OR {where(experiment_b=experiment_id)})"
        f" AND (unit_key LIKE 'compare/%' OR method = '{EMBEDDING}')",
    ).to_pandas()
    clustered = pairs[pairs.method != EMBEDDING]
    if not clustered.empty:
        stored = sorted(set(clustered.method))
        method = next(m for m in ("ward", *methods, *stored) if m in stored)
        factor = clustered.overclustering_factor[clustered.method == method].min()
        keep = (pairs.method == method) & (pairs.overclustering_factor == factor)
        pairs = pairs[keep | (pairs.method == EMBEDDING)]
    same = ["run_a", "epoch", "layer_a", "run_b", "epoch_b", "layer_b", "metric", "scope"]
    return pairs.drop_duplicates([*same, "method", "overclustering_factor"])


def _compare_html(
    store: EmbeddingStore, experiment_id: str, methods: list[str], render: Render
) -> list[str]:
    pairs = compare_pairs(store, experiment_id, methods)
    if pairs.empty:
        return []
    clustered = sorted(set(pairs.method) - {EMBEDDING})
    note = f"; ARI/AMI/NMI of {clustered[0]} clusterings" if clustered else ""
    return [
        "<h2>Across runs (stratalens compare; CKA and mutual k-NN between seeds)</h2>"
        f"<p>layers of side A (rows) x layers of side B (columns){note}.</p>"
        + _images_html([(fig, name) for name, fig in compare_figures(pairs)], render)
    ]


# -- HTML ------------------------------------------------------------------------
def _images_html(images: list[tuple[Figure | None, str]], render: Render) -> str:
    return "".join(render(fig, name) for fig, name in images if fig is not None)


def _galleries_html(
    store: EmbeddingStore,
    experiment_id: str,
    runs: pd.DataFrame,
    method: str,
    factor: int,
    epoch: int,
) -> str:
    """Thumbnails of the largest clusters of the last probed layer at ``epoch``, first seed
    of each (dataset, arch), at overclustering ``factor``."""
    sections = [f"<h2>Clusters ({method}, k = subclasses x {factor}, epoch {epoch})</h2>"]
    for row in runs.sort_values("seed").drop_duplicates(["dataset_id", "arch"]).itertuples():
        layer = layer_order(row.arch)[-1]
        gallery = cluster_gallery(
            store,
            experiment_id,
            dataset_id=row.dataset_id,
            arch=row.arch,
            seed=int(row.seed),
            layer=layer,
            method=method,
            factor=factor,
            epoch=epoch,
        )
        title = f"{row.dataset} / {row.hierarchy}, {row.arch}, {layer}, epoch {epoch}"
        sections.append(f"<h3>{html.escape(title)}, seed {row.seed}</h3>" + gallery_html(gallery))
    return "\n".join(sections)


def _runs_html(runs: pd.DataFrame) -> str:
    columns = [
        "dataset",
        "hierarchy",
        "arch",
        "loss",
        "seed",
        "epochs",
        "train_accuracy",
        "test_accuracy",
    ]
    return "<h2>Runs (superclass accuracy)</h2>" + runs[columns].to_html(
        index=False, float_format="%.3f"
    )


def _profile_html(profile: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    columns = ["dataset", "hierarchy", "arch", "epoch", "layer", "n_seeds"]
    columns += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
    shown = profile.sort_values(["dataset_id", "arch", "epoch", "layer_index"])
    table = shown[[c for c in columns if c in profile]].to_html(index=False, float_format="%.3f")
    return f"<details><summary>the numbers: {len(shown)} rows</summary>{table}</details>"


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stratalens: {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}}
img{{max-width:100%;margin:4px;vertical-align:top}}
img.thumb{{width:36px;height:36px;margin:1px;image-rendering:pixelated}}
div.cluster{{margin:2px 0}} div.cluster span{{display:inline-block;width:30em;font-size:90%}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px}}</style>
</head><body>
{body}
</body></html>
"""
