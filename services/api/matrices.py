"""Cross-seed layer x layer matrices of the ``pairs`` table (``/pairs?shape=matrix``)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from services.plots import layer_matrix, layer_order
from services.report import SEED_PAIRS
from storage import StoreError
from storage import queries as Q
from storage import schema as S
from storage.reads import StoreReads

# Columns that must take one value for the matrices to be one figure's worth.
MATRIX_KEYS = ("dataset_id", "arch", "epoch", "method", "overclustering_factor", "metric")
# The query parameter that narrows each of them.
PARAMETER = {"dataset_id": "dataset", "overclustering_factor": "factor"}


def pair_matrices(store: StoreReads, experiment_id: str, **conditions: Any) -> dict[str, Any]:
    """One layer x layer matrix per (seed_a, seed_b): the mean over scopes of ``value``.

    The rows matching ``conditions`` must share one value of each ``MATRIX_KEYS``
    column; otherwise a StoreError names the values to choose from.
    """
    stream = Q.table_rows(
        store,
        S.PAIRS,
        experiment_id,
        columns=[*MATRIX_KEYS, "seed_a", "seed_b", "layer_a", "layer_b", "value"],
        sql=SEED_PAIRS.removeprefix(" AND "),  # the cross-seed rows, as the report draws
        **conditions,
    )
    rows = pa.Table.from_batches(list(stream.batches), schema=stream.schema).to_pandas()
    if rows.empty:
        raise Q.NotFoundError(
            f"no pairs of experiment {experiment_id!r} match these filters; loosen them"
        )
    for column in MATRIX_KEYS:
        values = sorted(rows[column].unique().tolist())
        if len(values) > 1:
            raise StoreError(
                f"the matching pairs hold {len(values)} values of {column}: {values}; "
                f"choose one with {PARAMETER.get(column, column)}="
            )
    keys = {column: rows[column].iloc[0] for column in MATRIX_KEYS}
    layers = _layers(str(keys["arch"]), set(rows.layer_a) | set(rows.layer_b))
    matrices = []
    for (seed_a, seed_b), part in rows.groupby(["seed_a", "seed_b"]):
        _, matrix = layer_matrix(part, layers)
        matrices.append({"seed_a": int(seed_a), "seed_b": int(seed_b), "values": matrix})
    return {**keys, "layers": layers, "matrices": matrices}


def _layers(arch: str, stored: set[str]) -> list[str]:
    """The stored layers, input to output for a registered arch, else by name."""
    try:
        order = [layer for layer in layer_order(arch) if layer in stored]
    except (KeyError, ValueError):
        order = []
    return order + sorted(stored - set(order))
