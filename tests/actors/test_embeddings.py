"""Torch and Ray Dataset readers over a real store and a local Ray instance."""

import numpy as np
import pytest
import torch

from actors.embeddings import embeddings_dataset, embeddings_tensor
from storage import StoreError, embeddings_table
from storage import schema as S
from tests.factories import embedding_unit


def _write(store, unit: str, start: int, n: int, split: str) -> np.ndarray:
    table, values = embedding_unit(n, 6, split=split, start=start, seed=start)
    store.write_unit(embeddings_table("exp", "net", "fc"), unit, table, S.embeddings_schema(6))
    return values


def test_embeddings_tensor_shares_the_array_and_filters(store):
    test = _write(store, "u1", 0, 8, "test")
    _write(store, "u2", 8, 5, "train")
    tensor = embeddings_tensor(store, "exp", "net", "fc", split="test")
    assert tensor.dtype == torch.float32 and tensor.shape == (8, 6)
    np.testing.assert_array_equal(tensor.numpy(), test)
    assert embeddings_tensor(store, "exp", "net", "fc", device="cpu").shape == (13, 6)
    with pytest.raises(StoreError, match="stored layers"):
        embeddings_tensor(store, "exp", "net", "nope")


def test_embeddings_dataset_pushes_the_filter_into_ray_data(store, local_ray):
    _write(store, "u1", 0, 8, "test")
    version = store.version(embeddings_table("exp", "net", "fc"))
    train = _write(store, "u2", 8, 5, "train")
    ds = embeddings_dataset(
        store, "exp", "net", "fc", columns=["sample_index", "embedding"], split="train"
    )
    rows = sorted(ds.take_all(), key=lambda row: row["sample_index"])
    assert [row["sample_index"] for row in rows] == list(range(8, 13))
    np.testing.assert_array_equal(np.stack([row["embedding"] for row in rows]), train)
    assert embeddings_dataset(store, "exp", "net", "fc", version=version).count() == 8
    with pytest.raises(StoreError, match="has no version 99"):
        embeddings_dataset(store, "exp", "net", "fc", version=99)
