"""One layer's stored embeddings as a torch tensor or a Ray Dataset.

``storage`` answers queries with Arrow tables (:meth:`EmbeddingStore.embeddings`) and
NumPy arrays (:meth:`EmbeddingStore.embedding_array`) and never imports torch or ray;
these two readers sit on top of it for training code and for Ray Data pipelines.
"""

from __future__ import annotations

from typing import Any

import ray.data
import torch

from storage import EmbeddingStore
from storage.filters import where


def embeddings_tensor(
    store: EmbeddingStore,
    experiment_id: str,
    arch: str,
    layer: str,
    *,
    device: str | torch.device | None = None,
    version: int | str | None = None,
    **conditions: Any,
) -> torch.Tensor:
    """One layer's embeddings as an (n, d) float32 tensor, filtered by key columns.

    The tensor shares memory with the array the store reads (no copy) unless
    ``device`` moves it, e.g. ``device="cuda"``.
    """
    array = store.embedding_array(experiment_id, arch, layer, version=version, **conditions)
    tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def embeddings_dataset(
    store: EmbeddingStore,
    experiment_id: str,
    arch: str,
    layer: str,
    *,
    columns: list[str] | None = None,
    version: int | str | None = None,
    **conditions: Any,
) -> ray.data.Dataset:
    """One layer's rows as a lazy Ray Dataset, read by Ray Data's Lance reader.

    The filter on key columns is pushed down to Lance in each read task, so a
    cluster reads only the rows it needs, in parallel, from the same root URI.
    Raises :class:`storage.StoreError` when the layer is not stored.
    """
    ds = store.layer_dataset(experiment_id, arch, layer, version=version)
    return ray.data.read_lance(
        ds.uri,
        columns=columns,
        filter=where(**conditions),
        version=ds.version,  # the snapshot checked above, even if a writer commits meanwhile
        storage_options=store.storage_options,
    )
