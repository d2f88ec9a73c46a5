"""Summaries of a stored experiment: tables for the terminal, an HTML + PNG report.

Everything is read back from the store (``runs``, ``metrics``, ``pairs``, and
``clusterings`` with ``samples`` for the cluster galleries), so a report can be
rebuilt at any time without re-running the study.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from actors.models import probe_layers
from services.gallery import cluster_gallery, gallery_html
from storage import EmbeddingStore, StoreError
from storage import schema as S
from storage.filters import where

CLUSTER_METRICS = ("ami", "purity")


def runs_frame(store: EmbeddingStore, experiment_id: str) -> pd.DataFrame:
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
    """Per (dataset, arch, layer): mean and std over seeds of the per-superclass-mean scores.

    Columns: dataset_id, dataset, hierarchy, arch, layer, layer_index, and for each
    metric in ``ami, purity, ncc_superclass, ncc_subclass`` a ``_mean`` and ``_std``.
    ``factor`` defaults to the smallest overclustering factor stored.
    """
    runs = runs_frame(store, experiment_id)
    metrics = store.read(S.METRICS, filter=where(experiment_id=experiment_id)).to_pandas()
    clustered = metrics[(metrics.method == method) & metrics.metric.isin(CLUSTER_METRICS)]
    if clustered.empty:
        raise StoreError(
            f"experiment {experiment_id!r} has no {method!r} scores; pick a method it ran"
        )
    factor = int(clustered.overclustering_factor.min()) if factor is None else factor
    clustered = clustered[clustered.overclustering_factor == factor]
    ncc = metrics[metrics.method == "representation"]
    per_seed = (
        pd.concat([clustered, ncc])
        .groupby(["dataset_id", "arch", "seed", "layer", "metric"])["value"]
        .mean()  # mean over superclasses (scopes)
        .unstack("metric")
    )
    summary = per_seed.groupby(["dataset_id", "arch", "layer"]).agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary = summary.reset_index()
    names = runs.drop_duplicates("dataset_id").set_index("dataset_id")[["dataset", "hierarchy"]]
    summary = summary.join(names, on="dataset_id")
    summary["layer_index"] = [
        layer_order(arch).index(layer)
        for arch, layer in zip(summary.arch, summary.layer, strict=True)
    ]
    summary["method"], summary["overclustering_factor"] = method, factor
    return summary.sort_values(["dataset_id", "arch", "layer_index"]).reset_index(drop=True)


def consistency_matrix(
    store: EmbeddingStore,
    experiment_id: str,
    dataset_id: str,
    arch: str,
    *,
    method: str,
    factor: int,
) -> tuple[list[str], np.ndarray]:
    """Layer x layer ARI between seeds, averaged over superclasses and seed pairs."""
    pairs = store.read(
        S.PAIRS,
        filter=where(
            metric="ari",
            experiment_id=experiment_id,
            dataset_id=dataset_id,
            arch=arch,
            method=method,
            overclustering_factor=factor,
        ),
    ).to_pandas()
    layers = layer_order(arch)
    matrix = np.full((len(layers), len(layers)), np.nan)
    if pairs.empty:
        return layers, matrix
    means = pairs.groupby(["layer_a", "layer_b"])["value"].mean()
    for (a, b), value in means.items():
        matrix[layers.index(a), layers.index(b)] = value
    return layers, matrix


def write_report(store: EmbeddingStore, experiment_id: str, out_dir: str | Path) -> Path:
    """Write ``index.html`` and its PNG plots into ``out_dir``; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_frame(store, experiment_id)
    metrics = store.read(
        S.METRICS,
        columns=["method", "overclustering_factor"],
        filter=where(experiment_id=experiment_id),
    ).to_pandas()
    methods = sorted(set(metrics.method) - {"representation"})
    sections = [f"<h1>stratalens report: {html.escape(experiment_id)}</h1>", _runs_html(runs)]
    for method in methods:
        profile = layer_profile(store, experiment_id, method=method)
        factor = int(profile.overclustering_factor.iloc[0])
        images = [_plot_profile(profile, metric, out) for metric in CLUSTER_METRICS]
        images += [
            _plot_consistency(store, experiment_id, row, method, factor, out)
            for row in runs.drop_duplicates(["dataset_id", "arch"]).itertuples()
        ]
        sections.append(
            f"<h2>{method} (k = subclasses x {factor})</h2>"
            + "".join(f'<img src="{name}" alt="{name}">' for name in images)
            + _profile_html(profile)
        )
    if methods:
        shown = "ward" if "ward" in methods else methods[0]
        factor = int(metrics.overclustering_factor[metrics.method == shown].min())
        sections.append(_galleries_html(store, experiment_id, runs, shown, factor))
    page = out / "index.html"
    page.write_text(_PAGE.format(title=html.escape(experiment_id), body="\n".join(sections)))
    return page


def _plot_profile(profile: pd.DataFrame, metric: str, out: Path) -> str:
    import matplotlib.pyplot as plt

    archs = sorted(profile.arch.unique())
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        for _, group in profile[profile.arch == arch].groupby("dataset_id"):
            group = group.sort_values("layer_index")
            mean, std = group[f"{metric}_mean"], group[f"{metric}_std"].fillna(0)
            label = f"{group.dataset.iloc[0]} / {group.hierarchy.iloc[0]}"
            ax.plot(group.layer, mean, marker="o", label=label)
            ax.fill_between(group.layer, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"{arch}: {metric.upper()} of subclass clustering vs layer")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{metric} (mean over superclasses; ±1 sd over seeds)")
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    name = f"{metric}_vs_layer_{profile.method.iloc[0]}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _plot_consistency(store, experiment_id, row, method: str, factor: int, out: Path) -> str:
    import matplotlib.pyplot as plt

    layers, matrix = consistency_matrix(
        store, experiment_id, row.dataset_id, row.arch, method=method, factor=factor
    )
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(layers)), layers, rotation=60)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("layer (seed B)")
    ax.set_ylabel("layer (seed A)")
    ax.set_title(f"cross-seed ARI: {row.dataset}/{row.hierarchy}, {row.arch}", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    name = f"ari_{row.dataset_id}_{row.arch}_{method}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _galleries_html(
    store: EmbeddingStore, experiment_id: str, runs: pd.DataFrame, method: str, factor: int
) -> str:
    """Thumbnails of the largest clusters of the last probed layer, first seed of each
    (dataset, arch), at overclustering ``factor``."""
    sections = [f"<h2>Clusters ({method}, k = subclasses x {factor})</h2>"]
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
        )
        sections.append(
            f"<h3>{html.escape(f'{row.dataset} / {row.hierarchy}, {row.arch}, {layer}')}"
            f", seed {row.seed}</h3>" + gallery_html(gallery)
        )
    return "\n".join(sections)


def _runs_html(runs: pd.DataFrame) -> str:
    columns = ["dataset", "hierarchy", "arch", "seed", "epochs", "train_accuracy", "test_accuracy"]
    return "<h2>Runs (superclass accuracy)</h2>" + runs[columns].to_html(
        index=False, float_format="%.3f"
    )


def _profile_html(profile: pd.DataFrame) -> str:
    columns = [
        "dataset",
        "hierarchy",
        "arch",
        "layer",
        "ami_mean",
        "ami_std",
        "purity_mean",
        "ncc_subclass_mean",
    ]
    return profile[[c for c in columns if c in profile]].to_html(index=False, float_format="%.3f")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stratalens: {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
img{{max-width:48%;margin:4px}}
img.thumb{{width:36px;height:36px;margin:1px;image-rendering:pixelated}}
div.cluster{{margin:2px 0}} div.cluster span{{display:inline-block;width:24em;font-size:90%}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px}}</style>
</head><body>
{body}
</body></html>
"""
