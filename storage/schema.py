"""Table names and Arrow schemas of the stratalens store.

Table names are a public contract: external readers (DuckDB, Polars, pandas,
Ray Data) open ``<root>/<table>`` with plain Lance. Every table carries a
``unit_key`` column naming the unit of work that committed the row; a unit is
committed at most once (see :mod:`storage.store`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

EXPERIMENTS = "experiments"
RUNS = "runs"
SAMPLES = "samples"
CLUSTERINGS = "clusterings"
METRICS = "metrics"
PAIRS = "pairs"
EMBEDDINGS_PREFIX = "embeddings"

UNIT_KEY = "unit_key"
EMBEDDING = "embedding"
ROW_ID = "_rowid"  # Lance's row id column (the row's address: no stable row ids here)

_TS = pa.timestamp("us", tz="UTC")


def embeddings_table(experiment_id: str, arch: str, layer: str) -> str:
    """Name of the table holding one layer of one architecture in one experiment."""
    return f"{EMBEDDINGS_PREFIX}/{experiment_id}/{arch}/{layer}"


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(UNIT_KEY, pa.string(), nullable=False), *fields])


EXPERIMENTS_SCHEMA = _schema(
    ("experiment_id", pa.string()),
    ("name", pa.string()),
    ("spec", pa.string()),  # the validated spec as JSON
    ("created_at", _TS),
)

RUNS_SCHEMA = _schema(
    ("run_id", pa.string()),
    ("experiment_id", pa.string()),
    ("arch", pa.string()),
    ("loss", pa.string()),
    ("dataset_id", pa.string()),
    ("dataset", pa.string()),
    ("hierarchy", pa.string()),
    ("seed", pa.int32()),
    ("epochs", pa.int32()),
    ("status", pa.string()),
    ("train_accuracy", pa.float64()),  # superclass accuracy on the training split
    ("test_accuracy", pa.float64()),  # superclass accuracy on the held-out split
    ("train_seconds", pa.float64()),
    ("created_at", _TS),
)

SAMPLES_SCHEMA = _schema(
    ("dataset_id", pa.string()),
    ("dataset", pa.string()),
    ("hierarchy", pa.string()),
    ("split", pa.string()),
    ("sample_index", pa.int64()),
    ("subclass", pa.int32()),
    ("superclass", pa.int32()),
    ("subclass_name", pa.string()),
    ("superclass_name", pa.string()),
    ("path", pa.string()),  # the image file, relative to the dataset root; null if none
    ("thumbnail", pa.binary()),  # PNG bytes; null where options.thumbnails leaves it out
)

# Identifying columns shared by clusterings, metrics and embeddings.
_RUN_KEYS = (
    ("experiment_id", pa.string()),
    ("run_id", pa.string()),
    ("dataset_id", pa.string()),
    ("arch", pa.string()),
    ("seed", pa.int32()),
    ("epoch", pa.int32()),
)


EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def embeddings_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """Schema of an embeddings table whose vectors have ``dim`` entries of ``dtype``
    (float32, or float16 to halve the bytes)."""
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding dtype {dtype!r} is not one of {list(EMBEDDING_DTYPES)}")
    return _schema(
        *_RUN_KEYS,
        ("split", pa.string()),
        ("sample_index", pa.int64()),
        ("subclass", pa.int32()),
        ("superclass", pa.int32()),
        (EMBEDDING, pa.list_(EMBEDDING_DTYPES[dtype], dim)),
    )


def embedding_rows(
    values: np.ndarray,
    *,
    sample_index,
    subclass,
    superclass,
    experiment_id: str,
    run_id: str,
    dataset_id: str,
    arch: str,
    seed: int,
    epoch: int,
    split: str,
) -> pa.Table:
    """The Arrow rows of an embeddings unit: one row per sample, ``values`` (n, d) float."""
    n, dim = values.shape

    def repeat(value, dtype):
        return pa.array(np.full(n, value), dtype) if dtype != pa.string() else pa.array([value] * n)

    return pa.table(
        {
            "experiment_id": repeat(experiment_id, pa.string()),
            "run_id": repeat(run_id, pa.string()),
            "dataset_id": repeat(dataset_id, pa.string()),
            "arch": repeat(arch, pa.string()),
            "seed": repeat(seed, pa.int32()),
            "epoch": repeat(epoch, pa.int32()),
            "split": repeat(split, pa.string()),
            "sample_index": pa.array(np.asarray(sample_index, dtype=np.int64)),
            "subclass": pa.array(np.asarray(subclass, dtype=np.int32)),
            "superclass": pa.array(np.asarray(superclass, dtype=np.int32)),
            EMBEDDING: pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(values).ravel()), dim
            ),
        }
    )


CLUSTERINGS_SCHEMA = _schema(
    *_RUN_KEYS,
    ("layer", pa.string()),
    ("split", pa.string()),
    ("scope", pa.string()),  # "superclass=<id>" or "all"
    ("method", pa.string()),
    ("overclustering_factor", pa.int32()),
    ("n_clusters", pa.int32()),
    ("sample_index", pa.list_(pa.int64())),
    ("labels", pa.list_(pa.int32())),
)

METRICS_SCHEMA = _schema(
    *_RUN_KEYS,
    ("layer", pa.string()),
    ("split", pa.string()),
    ("scope", pa.string()),
    ("method", pa.string()),  # clustering method, or "ncc" for representation measures
    ("overclustering_factor", pa.int32()),
    ("n_clusters", pa.int32()),
    ("metric", pa.string()),
    ("value", pa.float64()),
)

PAIRS_SCHEMA = _schema(
    ("experiment_id", pa.string()),
    ("dataset_id", pa.string()),
    ("arch", pa.string()),
    ("epoch", pa.int32()),
    ("split", pa.string()),
    ("scope", pa.string()),
    ("method", pa.string()),
    ("overclustering_factor", pa.int32()),
    ("run_a", pa.string()),
    ("seed_a", pa.int32()),
    ("layer_a", pa.string()),
    ("run_b", pa.string()),
    ("seed_b", pa.int32()),
    ("layer_b", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    # Side B's own keys (`stratalens compare` pairs runs across experiments, archs and
    # epochs); experiment_id, arch and epoch above are side A's. Appended last so
    # readers of the older columns keep working.
    ("experiment_b", pa.string()),
    ("arch_b", pa.string()),
    ("epoch_b", pa.int32()),
)
PAIRS_SIDE_B = {"experiment_b": "experiment_id", "arch_b": "arch", "epoch_b": "epoch"}

FIXED_SCHEMAS: dict[str, pa.Schema] = {
    EXPERIMENTS: EXPERIMENTS_SCHEMA,
    RUNS: RUNS_SCHEMA,
    SAMPLES: SAMPLES_SCHEMA,
    CLUSTERINGS: CLUSTERINGS_SCHEMA,
    METRICS: METRICS_SCHEMA,
    PAIRS: PAIRS_SCHEMA,
}
