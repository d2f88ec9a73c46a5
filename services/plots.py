"""The figures of an experiment, shared by the static report and the dashboard.

Each function draws one matplotlib figure from summaries already computed
(:func:`services.report.layer_profile` frames, ``pairs`` rows) and returns it;
:func:`png_image` saves one beside a report page, :func:`svg_image` inlines one
in the dashboard's HTML.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from actors.models import probe_layers

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
COMPARE_PANELS = 12  # (side A, side B) heatmaps in one compare figure


def layer_order(arch: str) -> list[str]:
    """The probed layers of ``arch``, input to output."""
    return list(probe_layers(arch))


def layer_matrix(
    pairs: pd.DataFrame, layers: list[str], layers_b: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Mean ``value`` per (layer_a, layer_b) of ``pairs`` as a layers x layers matrix.

    ``layers_b`` (default ``layers``) are the columns, for pairs of two archs.
    """
    columns = layers if layers_b is None else layers_b
    matrix = np.full((len(layers), len(columns)), np.nan)
    for (a, b), value in pairs.groupby(["layer_a", "layer_b"])["value"].mean().items():
        matrix[layers.index(a), columns.index(b)] = value
    return layers, matrix


def png_image(fig: Figure, out: Path, name: str) -> str:
    """Save ``fig`` as ``out/<name>.png`` and close it; the ``<img>`` tag that shows it."""
    import matplotlib.pyplot as plt

    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="{name}.png" alt="{name}.png">'


def svg_image(fig: Figure, name: str) -> str:
    """``fig`` as an ``<img>`` tag holding its SVG as a data URI (the page needs no other
    request, and each figure keeps its own SVG ids); closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="plot" src="data:image/svg+xml;base64,{data}" alt="{name}">'


def figure_vs_layer(profile: pd.DataFrame, metric: str, scopes: str) -> Figure | None:
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
    fig.tight_layout()
    return fig


def figure_vs_epoch(profile: pd.DataFrame, metric: str, scopes: str) -> Figure | None:
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
    fig.tight_layout()
    return fig


def consistency_figures(
    pairs: pd.DataFrame, runs: pd.DataFrame, method: str, factor: int
) -> list[tuple[str, Figure]]:
    """Cross-seed layer x layer heatmaps, one figure per (dataset, arch), a panel per epoch.

    Returns (name, figure) pairs, named ``<metric>_<dataset_id>_<arch>_<method>``.
    """
    pairs = pairs[(pairs.method == method) & (pairs.overclustering_factor == factor)]
    if pairs.empty:
        return []
    stored = set(pairs.metric)
    metric = "ari" if "ari" in stored else sorted(stored)[0]
    pairs = pairs[pairs.metric == metric]
    figures = []
    for row in runs.drop_duplicates(["dataset_id", "arch"]).itertuples():
        part = pairs[(pairs.dataset_id == row.dataset_id) & (pairs.arch == row.arch)]
        epochs = sorted(int(e) for e in part.epoch.unique())
        if not epochs:
            continue
        fig, axes = _figure(len(epochs), size=(5.0, 4.4))
        for ax, epoch in zip(axes, epochs, strict=True):
            layers, matrix = layer_matrix(part[part.epoch == epoch], layer_order(row.arch))
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
        figures.append((f"{metric}_{row.dataset_id}_{row.arch}_{method}", fig))
    return figures


def compare_figures(pairs: pd.DataFrame) -> list[tuple[str, Figure]]:
    """Layers-of-A x layers-of-B heatmaps of ``pairs`` rows with side-B keys.

    One figure per metric, a panel per (experiment, arch, epoch) of side A and of side
    B, the mean over the pairs of runs and scopes it holds; at most ``COMPARE_PANELS``
    panels (the title counts the rest). Returns (name, figure), named ``compare_<metric>``.
    """
    sides = ["experiment_id", "arch", "epoch", "experiment_b", "arch_b", "epoch_b"]
    figures = []
    for metric, rows in pairs.groupby("metric"):
        panels = sorted(rows.groupby(sides).groups)
        shown = panels[:COMPARE_PANELS]
        fig, axes = _figure(len(shown), size=(5.0, 4.6))
        for ax, key in zip(axes, shown, strict=True):
            part = rows[(rows[sides] == pd.Series(key, index=sides)).all(axis=1)]
            experiment_a, arch_a, epoch_a, experiment_b, arch_b, epoch_b = key
            layers_a = [name for name in layer_order(arch_a) if name in set(part.layer_a)]
            layers_b = [name for name in layer_order(arch_b) if name in set(part.layer_b)]
            _, matrix = layer_matrix(part, layers_a, layers_b)
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(layers_b)), layers_b, rotation=60)
            ax.set_yticks(range(len(layers_a)), layers_a)
            ax.set_xlabel(f"B: {experiment_b} {arch_b}, epoch {epoch_b}")
            ax.set_ylabel(f"A: {experiment_a} {arch_a}, epoch {epoch_a}")
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"{metric}, mean over pairs of runs")
        more = f" ({len(panels) - len(shown)} more pairs of sides not drawn)" * (
            len(panels) > len(shown)
        )
        fig.suptitle(f"{metric}: layers of A x layers of B{more}", fontsize=11)
        figures.append((f"compare_{metric}", fig))
    return figures


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


def _dataset_colours(profile: pd.DataFrame) -> dict[str, tuple]:
    """One colour per dataset, the same in every panel."""
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    return {d: palette(i % 10) for i, d in enumerate(sorted(profile.dataset_id.unique()))}
