"""Summaries of a stored experiment: tables for the terminal, an HTML + PNG report.

Everything is read back from the store (``runs``, ``metrics``, ``pairs``, and
``clusterings`` with ``samples`` for the cluster galleries), so a report can be
rebuilt at any time without re-running the study. Every summary keys on the
probe epoch: scores of different epochs are never averaged together.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from actors.models import probe_layers
from services.gallery import cluster_gallery, gallery_html
from storage import EmbeddingStore, StoreError
from storage import schema as S
from storage.filters import where

CLUSTER_METRICS = ("ami", "purity")  # drawn against layer and epoch for every method
REPRESENTATION_METRICS = ("ncc_subclass", "ncc_superclass")  # drawn once, method-independent
REPRESENTATION = "representation"  # the ``method`` of per-layer (not per-clustering) rows
PROFILE_KEYS = ["dataset_id", "arch", "epoch", "layer"]
METRIC_LABELS = {
    "ami": "AMI",
    "purity": "purity",
    "ncc_subclass": "NCC accuracy (subclass)",
    "ncc_superclass": "NCC accuracy (superclass)",
}
LAYER_COLOURS = ("viridis", 0.85)  # colour map of layers, input to output, and its last stop
PANEL_COLUMNS = 3  # subplots per row of a report figure
PANEL_SIZE = (5.5, 4.2)  # inches per subplot
DPI = 110
# Rows of the pipeline's cross-seed stage; `stratalens compare` rows (keys "compare/...")
# pair other sides (archs, experiments, epochs) and are drawn by compare_matrix alone.
SEED_PAIRS = " AND NOT unit_key LIKE 'compare/%'"


def runs_frame(store: EmbeddingStore, experiment_id: str) -> pd.DataFrame:
    """The finished runs of ``experiment_id``, sorted by dataset, arch and seed."""
    runs = store.read(S.RUNS, filter=where(experiment_id=experiment_id)).to_pandas()
    if runs.empty:
        raise StoreError(
            f"experiment {experiment_id!r} has no finished runs in {store.root}; "
            "run `stratalens ls` to see what the store holds"
        )
    return runs.drop(columns=[S.UNIT_KEY]).sort_values(["dataset_id", "arch", "seed"])


def layer_order(arch: str) -> list[str]:
    """The probed layers of ``arch``, input to output."""
    return list(probe_layers(arch))


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
    metrics = store.read(S.METRICS, filter=where(experiment_id=experiment_id)).to_pandas()
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
    return _layer_matrix(pairs, layer_order(arch))


def write_report(store: EmbeddingStore, experiment_id: str, out_dir: str | Path) -> Path:
    """Write ``index.html`` and its PNG plots into ``out_dir``; returns the HTML path.

    Per clustering method: AMI and purity against layer (a panel per probe
    epoch) and, with several probe epochs, against epoch (a line per layer);
    cross-seed heatmaps (a panel per epoch). Then NCC accuracy the same way,
    and cluster galleries of the last probed layer at the last probe epoch.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_frame(store, experiment_id)
    metrics = store.read(S.METRICS, filter=where(experiment_id=experiment_id)).to_pandas()
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
        _runs_html(runs),
    ]
    profile = None
    for method in methods:
        profile = _profile(metrics, runs, experiment_id, method, None)
        factor = int(profile.overclustering_factor.iloc[0])
        images = [
            _plot_vs_layer(profile, m, f"{m}_vs_layer_{method}", scopes, out)
            for m in CLUSTER_METRICS
        ]
        if several:
            images += [
                _plot_vs_epoch(profile, m, f"{m}_vs_epoch_{method}", scopes, out)
                for m in CLUSTER_METRICS
            ]
        images += _plot_consistency(pairs, runs, method, factor, out)
        sections.append(
            f"<h2>{method} (k = subclasses x {factor})</h2>"
            + _images_html(images)
            + _profile_html(profile, _clustering_metrics(metrics, method))
        )
    if profile is not None and any(f"{m}_mean" in profile for m in REPRESENTATION_METRICS):
        images = [
            _plot_vs_layer(profile, m, f"{m}_vs_layer", "", out) for m in REPRESENTATION_METRICS
        ]
        if several:
            images += [
                _plot_vs_epoch(profile, m, f"{m}_vs_epoch", "", out) for m in REPRESENTATION_METRICS
            ]
        sections.append(
            "<h2>Nearest-class-centre accuracy (train class means, test samples)</h2>"
            + _images_html(images)
            + _profile_html(profile, REPRESENTATION_METRICS)
        )
    if methods:
        shown = "ward" if "ward" in methods else methods[0]
        factor = int(metrics.overclustering_factor[metrics.method == shown].min())
        sections.append(_galleries_html(store, experiment_id, runs, shown, factor, epochs[-1]))
    page = out / "index.html"
    page.write_text(_PAGE.format(title=html.escape(experiment_id), body="\n".join(sections)))
    return page


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


def _layer_matrix(pairs: pd.DataFrame, layers: list[str]) -> tuple[list[str], np.ndarray]:
    """Mean ``value`` per (layer_a, layer_b) of ``pairs`` as a layers x layers matrix."""
    matrix = np.full((len(layers), len(layers)), np.nan)
    for (a, b), value in pairs.groupby(["layer_a", "layer_b"])["value"].mean().items():
        matrix[layers.index(a), layers.index(b)] = value
    return layers, matrix


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


# -- figures ---------------------------------------------------------------------
def _plot_vs_layer(profile: pd.DataFrame, metric: str, name: str, scopes: str, out: Path):
    """``metric`` against layer, a panel per (arch, probe epoch), a line per dataset."""
    if f"{metric}_mean" not in profile:
        return None
    panels = sorted(set(zip(profile.arch, profile.epoch, strict=True)))
    fig, axes = _figure(len(panels))
    colours = _dataset_colours(profile)
    for ax, (arch, epoch) in zip(axes, panels, strict=True):
        part = profile[(profile.arch == arch) & (profile.epoch == epoch)]
        for dataset_id, group in part.groupby("dataset_id"):
            group = group.sort_values("layer_index")
            label = f"{group.dataset.iloc[0]} / {group.hierarchy.iloc[0]}"
            _line(ax, group.layer_index, group, metric, colours[dataset_id], label)
        layers = layer_order(arch)
        ax.set_xticks(range(len(layers)), layers, rotation=45)
        ax.set_xlabel("layer")
        ax.set_title(f"{arch}, epoch {epoch}: {_label(metric)} vs layer", fontsize=10)
    _finish(axes, metric, scopes)
    axes[0].legend(fontsize=8)
    return _save(fig, out, name)


def _plot_vs_epoch(profile: pd.DataFrame, metric: str, name: str, scopes: str, out: Path):
    """``metric`` against probe epoch, a panel per (dataset, arch), a line per layer."""
    if f"{metric}_mean" not in profile:
        return None
    import matplotlib.pyplot as plt

    panels = sorted(set(zip(profile.dataset_id, profile.arch, strict=True)))
    fig, axes = _figure(len(panels))
    for ax, (dataset_id, arch) in zip(axes, panels, strict=True):
        part = profile[(profile.dataset_id == dataset_id) & (profile.arch == arch)]
        layers = layer_order(arch)
        for index, layer in enumerate(layers):
            group = part[part.layer == layer].sort_values("epoch")
            if not group.empty:
                cmap, last = LAYER_COLOURS
                colour = plt.get_cmap(cmap)(last * index / max(1, len(layers) - 1))
                _line(ax, group.epoch, group, metric, colour, layer, band=0.1)
        ax.set_xticks(sorted(part.epoch.unique()))
        ax.set_xlabel("epoch")
        first = part.iloc[0]
        title = f"{first.dataset} / {first.hierarchy}, {arch}: {_label(metric)} vs epoch"
        ax.set_title(title, fontsize=10)
    _finish(axes, metric, scopes)
    # outside the panels, right of the first row: the lines of six layers leave no free corner
    axes[min(len(axes), PANEL_COLUMNS) - 1].legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="layer"
    )
    return _save(fig, out, name)


def _plot_consistency(
    pairs: pd.DataFrame, runs: pd.DataFrame, method: str, factor: int, out: Path
) -> list[str]:
    """Cross-seed layer x layer heatmaps, one figure per (dataset, arch), a panel per epoch."""
    pairs = pairs[(pairs.method == method) & (pairs.overclustering_factor == factor)]
    if pairs.empty:
        return []
    stored = set(pairs.metric)
    metric = "ari" if "ari" in stored else sorted(stored)[0]
    pairs = pairs[pairs.metric == metric]
    names = []
    for row in runs.drop_duplicates(["dataset_id", "arch"]).itertuples():
        part = pairs[(pairs.dataset_id == row.dataset_id) & (pairs.arch == row.arch)]
        epochs = sorted(int(e) for e in part.epoch.unique())
        if not epochs:
            continue
        fig, axes = _figure(len(epochs), size=(5.0, 4.4))
        for ax, epoch in zip(axes, epochs, strict=True):
            layers, matrix = _layer_matrix(part[part.epoch == epoch], layer_order(row.arch))
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(layers)), layers, rotation=60)
            ax.set_yticks(range(len(layers)), layers)
            ax.set_xlabel("layer (seed B)")
            ax.set_title(f"epoch {epoch}", fontsize=10)
        axes[0].set_ylabel("layer (seed A)")
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"{metric.upper()}, mean over seed pairs")
        fig.suptitle(
            f"cross-seed {metric.upper()}: {row.dataset} / {row.hierarchy}, {row.arch}, "
            f"{method}, k = subclasses x {factor}",
            fontsize=11,
        )
        names.append(_save(fig, out, f"{metric}_{row.dataset_id}_{row.arch}_{method}", tight=False))
    return names


def _figure(n_panels: int, size: tuple[float, float] = PANEL_SIZE):
    """A figure of ``n_panels`` subplots, ``PANEL_COLUMNS`` to a row; the used axes."""
    import matplotlib.pyplot as plt

    columns = min(n_panels, PANEL_COLUMNS)
    rows = math.ceil(n_panels / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False
    )
    for ax in axes.flat[n_panels:]:
        ax.remove()
    return fig, list(axes.flat[:n_panels])


def _line(
    ax, x, group: pd.DataFrame, metric: str, colour, label: str, *, band: float = 0.2
) -> None:
    """Mean with a ± 1 sd band of opacity ``band`` (no band for a single seed)."""
    mean, std = group[f"{metric}_mean"], group[f"{metric}_std"].fillna(0)
    ax.plot(x, mean, marker="o", color=colour, label=label)
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=band, linewidth=0)


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _finish(axes, metric: str, scopes: str) -> None:
    """Shared y range and the y label."""
    lows = [ax.get_ylim()[0] for ax in axes]
    for ax in axes:
        ax.set_ylim(min(0.0, *lows), 1.0)
        ax.grid(alpha=0.3)
    note = f"mean {scopes}; " if scopes else ""
    axes[0].set_ylabel(f"{_label(metric)} ({note}± 1 sd over seeds)")


def _save(fig, out: Path, name: str, *, tight: bool = True) -> str:
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return f"{name}.png"


def _dataset_colours(profile: pd.DataFrame) -> dict[str, tuple]:
    """One colour per dataset, the same in every panel."""
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    return {d: palette(i % 10) for i, d in enumerate(sorted(profile.dataset_id.unique()))}


# -- HTML ------------------------------------------------------------------------
def _images_html(names: list[str | None]) -> str:
    return "".join(f'<img src="{n}" alt="{n}">' for n in names if n)


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
