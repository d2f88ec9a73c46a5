"""Layer x layer matrices of the ``pairs`` table (``/pairs?shape=matrix``).

``source=seeds`` (the default): the score stage's rows, one matrix per pair of
seeds of one arch. ``source=compare``: the rows of ``stratalens compare`` with
the experiment as side A, one layers-of-A x layers-of-B matrix per pair of sides
(experiment, arch, epoch, seed on each side).
"""

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
# For ``stratalens compare`` rows: what must take one value, and what tells the sides apart.
COMPARE_KEYS = ("dataset_id", "split", "method", "overclustering_factor", "metric")
SIDE_KEYS = ("arch", "epoch", "seed_a", "experiment_b", "arch_b", "epoch_b", "seed_b")
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
    keys = _one_value_each(rows, MATRIX_KEYS)
    layers = _layers(str(keys["arch"]), set(rows.layer_a) | set(rows.layer_b))
    matrices = []
    for (seed_a, seed_b), part in rows.groupby(["seed_a", "seed_b"]):
        _, matrix = layer_matrix(part, layers)
        matrices.append({"seed_a": int(seed_a), "seed_b": int(seed_b), "values": matrix})
    return {**keys, "layers": layers, "matrices": matrices}


def compare_matrices(store: StoreReads, experiment_id: str, **conditions: Any) -> dict[str, Any]:
    """One layers-of-A x layers-of-B matrix per pair of sides of ``stratalens compare`` rows
    whose side A is ``experiment_id``: the mean over scopes of ``value``.

    The rows must share one value of each ``COMPARE_KEYS`` column (a StoreError names
    the values to choose from); each matrix carries both sides' keys and layers.
    """
    stream = Q.table_rows(
        store,
        S.PAIRS,
        experiment_id,
        columns=[*COMPARE_KEYS, *SIDE_KEYS, "layer_a", "layer_b", "value"],
        sql="unit_key LIKE 'compare/%'",
        **conditions,
    )
    rows = pa.Table.from_batches(list(stream.batches), schema=stream.schema).to_pandas()
    if rows.empty:
        raise Q.NotFoundError(
            f"no `stratalens compare` pairs with experiment {experiment_id!r} as side A match "
            "these filters; run `stratalens compare` or loosen them"
        )
    keys = _one_value_each(rows, COMPARE_KEYS)
    matrices = []
    for sides, part in rows.groupby(list(SIDE_KEYS)):
        side = dict(zip(SIDE_KEYS, sides, strict=True))
        layers_a = _layers(str(side["arch"]), set(part.layer_a))
        layers_b = _layers(str(side["arch_b"]), set(part.layer_b))
        _, matrix = layer_matrix(part, layers_a, layers_b)
        for column in ("epoch", "seed_a", "epoch_b", "seed_b"):
            side[column] = int(side[column])
        matrices.append({**side, "layers_a": layers_a, "layers_b": layers_b, "values": matrix})
    return {"experiment_id": experiment_id, **keys, "matrices": matrices}


def _one_value_each(rows, columns) -> dict[str, Any]:
    """The one value each of ``columns`` takes in ``rows``; StoreError naming the choices."""
    for column in columns:
        values = sorted(rows[column].unique().tolist())
        if len(values) > 1:
            raise StoreError(
                f"the matching pairs hold {len(values)} values of {column}: {values}; "
                f"choose one with {PARAMETER.get(column, column)}="
            )
    return {column: rows[column].iloc[0] for column in columns}


def _layers(arch: str, stored: set[str]) -> list[str]:
    """The stored layers, input to output for a registered arch, else by name."""
    try:
        order = [layer for layer in layer_order(arch) if layer in stored]
    except (KeyError, ValueError):
        order = []
    return order + sorted(stored - set(order))
