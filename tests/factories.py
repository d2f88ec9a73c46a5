"""Synthetic rows for store tests: one embeddings unit with known values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from storage import schema as S


def embedding_unit(
    n: int,
    dim: int = 4,
    *,
    split: str = "test",
    run: str = "r0",
    start: int = 0,
    seed: int = 0,
) -> tuple[pa.Table, np.ndarray]:
    """n rows of table ``embeddings/exp/net/<layer>`` (sample_index start..start+n-1,
    subclass i % 3, superclass i % 2) and their float32 values."""
    values = np.random.RandomState(seed).rand(n, dim).astype(np.float32)
    table = S.embedding_rows(
        values,
        sample_index=np.arange(start, start + n),
        subclass=np.arange(n) % 3,
        superclass=np.arange(n) % 2,
        experiment_id="exp",
        run_id=run,
        dataset_id="d",
        arch="net",
        seed=0,
        epoch=1,
        split=split,
    )
    return table, values
