"""Cluster galleries: thumbnails of the samples in each cluster of one clustering.

Reads only the ``clusterings`` and ``samples`` tables (the samples table keeps a
small PNG of every image), so a gallery needs neither the raw dataset nor the
embeddings.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from dataclasses import dataclass

import numpy as np

from storage import EmbeddingStore, StoreError
from storage import schema as S
from storage.filters import where

GALLERY_SUPERCLASSES = 4  # superclasses shown per gallery
GALLERY_CLUSTERS = 6  # largest clusters shown per superclass
GALLERY_IMAGES = 10  # thumbnails shown per cluster
ALL_SAMPLES = "all samples"  # gallery title of a clustering of the whole split


@dataclass(frozen=True)
class ClusterView:
    """One cluster: its size, its subclasses (most common first) and some thumbnails."""

    cluster: int
    size: int
    subclasses: list[tuple[str, int]]
    thumbnails: list[bytes]

    @property
    def purity(self) -> float:
        """Share of the cluster's samples in its most common subclass."""
        return self.subclasses[0][1] / self.size


def cluster_gallery(
    store: EmbeddingStore,
    experiment_id: str,
    *,
    dataset_id: str,
    arch: str,
    seed: int,
    layer: str,
    method: str,
    factor: int,
    epoch: int | None = None,
    superclasses: int = GALLERY_SUPERCLASSES,
    clusters: int = GALLERY_CLUSTERS,
    images: int = GALLERY_IMAGES,
) -> dict[str, list[ClusterView]]:
    """The largest ``clusters`` clusters of each of the first ``superclasses`` superclasses.

    Uses the clustering of probe ``epoch`` (default: the last one stored). Keys are
    superclass names, or ``ALL_SAMPLES`` for a clustering of the whole split
    (``clustering.scope: all``).
    """
    rows = store.read(
        S.CLUSTERINGS,
        columns=["epoch", "split", "scope", "sample_index", "labels"],
        filter=where(
            experiment_id=experiment_id,
            dataset_id=dataset_id,
            arch=arch,
            seed=seed,
            layer=layer,
            method=method,
            overclustering_factor=factor,
        ),
    ).to_pylist()
    if not rows:
        raise StoreError(
            f"no {method!r} clustering of layer {layer!r} (seed {seed}, k = subclasses x "
            f"{factor}) in experiment {experiment_id!r}; pick one that `stratalens show` lists"
        )
    epochs = sorted({row["epoch"] for row in rows})
    epoch = epochs[-1] if epoch is None else epoch
    if epoch not in epochs:
        raise StoreError(
            f"layer {layer!r} of seed {seed} was not clustered at epoch {epoch}; "
            f"pick one of the probe epochs {epochs}"
        )
    rows = [row for row in rows if row["epoch"] == epoch]
    rows.sort(key=lambda row: _scope_order(row["scope"]))
    rows = rows[:superclasses]
    split = rows[0]["split"]

    names = store.read(
        S.SAMPLES,
        columns=["sample_index", "subclass_name", "superclass_name"],
        filter=where(dataset_id=dataset_id, split=split),
    ).to_pydict()
    subclass_of = dict(zip(names["sample_index"], names["subclass_name"], strict=True))
    superclass_of = dict(zip(names["sample_index"], names["superclass_name"], strict=True))

    picked: dict[str, list[tuple[int, list[int]]]] = {}  # superclass: (cluster, members)
    for row in rows:
        index, labels = np.asarray(row["sample_index"]), np.asarray(row["labels"])
        ids, sizes = np.unique(labels, return_counts=True)
        largest = ids[np.argsort(-sizes, kind="stable")][:clusters]
        title = _scope_title(row["scope"], index, superclass_of)
        picked[title] = [(int(c), index[labels == c].tolist()) for c in largest]

    shown = sorted(
        {i for views in picked.values() for _, members in views for i in members[:images]}
    )
    thumbs = store.read(
        S.SAMPLES,
        columns=["sample_index", "thumbnail"],
        filter=where(dataset_id=dataset_id, split=split, sample_index=shown),
    ).to_pydict()
    thumbnail_of = dict(zip(thumbs["sample_index"], thumbs["thumbnail"], strict=True))
    return {
        title: [
            ClusterView(
                cluster=c,
                size=len(members),
                subclasses=Counter(subclass_of.get(i, "?") for i in members).most_common(),
                thumbnails=[thumbnail_of[i] for i in members[:images] if thumbnail_of.get(i)],
            )
            for c, members in views
        ]
        for title, views in picked.items()
    }


def gallery_html(gallery: dict[str, list[ClusterView]]) -> str:
    """The gallery as HTML, thumbnails inlined as data URIs (no files beside the page)."""
    parts = []
    for superclass, views in gallery.items():
        parts.append(f"<h4>{html.escape(superclass)}</h4>")
        for view in views:
            top = view.subclasses[0][0]
            caption = (
                f"cluster {view.cluster}: {view.size} samples, {view.purity:.0%} {html.escape(top)}"
            )
            if len(view.subclasses) > 1:
                caption += f" (+{len(view.subclasses) - 1} more subclasses)"
            images = "".join(
                f'<img class="thumb" alt="" src="data:image/png;base64,'
                f'{base64.b64encode(png).decode()}">'
                for png in view.thumbnails
            )
            parts.append(f'<div class="cluster"><span>{caption}</span>{images}</div>')
    return "\n".join(parts)


def _scope_title(scope: str, index: np.ndarray, superclass_of: dict[int, str]) -> str:
    """A superclass scope's name (that of its first sample); ``ALL_SAMPLES`` for scope all."""
    if scope.startswith("superclass=") and len(index):
        return superclass_of.get(int(index[0]), scope)
    return ALL_SAMPLES if scope == "all" else scope


def _scope_order(scope: str) -> tuple[int, str]:
    """``superclass=<id>`` scopes in id order, others after."""
    prefix = "superclass="
    if scope.startswith(prefix) and scope[len(prefix) :].isdigit():
        return int(scope[len(prefix) :]), scope
    return 1 << 30, scope
