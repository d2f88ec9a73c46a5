"""The intraclass stage: c1-c4 (Carbonnelle & De Vleeschouwer, ICLR 2021) of each run.

Enabled by ``metrics.intraclass: [c1, c2, c3, c4]``. Each run is measured once,
at its last probe epoch, on its TRAINING split, over all its probed layers
together, and the values go to the ``metrics`` table (method ``intraclass``,
layer ``all``, metric ``c1`` .. ``c4``).

The paper's inputs are pre-activations (after batch norm, before ReLU), conv
feature maps reduced by global max pooling. The store holds what the arch item
probes, so a study lists pre-activation layers and ``pool: max`` (for
``small_cnn``: ``conv1.1`` .. ``conv4.1``, the BatchNorms, and ``fc1.0``,
``fc2.0``, the Linears, which have no BatchNorm). c1, c3 and c4 read those
values; c2 reads activations, ReLU of them (exact: ReLU commutes with max
pooling). An item probing post-ReLU layers gets the measures of its
activations instead. c3 and c4 take the training labels (superclasses) as
their classes: the variance measures need no hierarchy. k = 30 neurons (c1, c3)
and k = 1 layer (c2, c4: the paper's value for VGG-style networks, which
``small_cnn`` is).

c2 and c4 need every pairwise distance of a superclass, so each layer of the
training split is read whole (streamed in batches into one array). The
built-in datasets' training splits are small by construction (digits: 1,258
samples; shapes: 2,400); for larger ones at most ``MAX_ROWS_PER_SUBCLASS``
samples per subclass are read (CIFAR-100's 500 a class: all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from services.metrics.intraclass import (
    intraclass_c1,
    intraclass_c2,
    intraclass_c3,
    intraclass_c4,
)
from services.scoring import _METRICS_FIELDS
from storage import schema as S
from storage.reads import embedding_matrix

INTRACLASS_METHOD = "intraclass"
INTRACLASS_LAYER = "all"  # one value per run, over every probed layer
LAYERS_TOP_K = 1
MAX_ROWS_PER_SUBCLASS = 500
READ_BATCH_ROWS = 8192


@dataclass(frozen=True)
class IntraclassUnit:
    """One run's intraclass measures, at one epoch, on one (training) split."""

    experiment_id: str
    run_id: str
    dataset_id: str
    arch: str
    seed: int
    epoch: int
    split: str
    layers: tuple[str, ...]
    metrics: tuple[str, ...] = ("c1", "c2", "c3", "c4")

    @property
    def unit_key(self) -> str:
        return f"intraclass/{self.run_id}/epoch{self.epoch}"


def intraclass_units(spec, plans) -> list[IntraclassUnit]:
    """One unit per run plan (at its last probe epoch) when the spec asks for measures."""
    metrics = tuple(spec.metrics.intraclass)
    if not metrics:
        return []
    return [
        IntraclassUnit(
            experiment_id=spec.experiment_id,
            run_id=p.run_id,
            dataset_id=p.dataset.dataset_id,
            arch=p.arch,
            seed=p.seed,
            epoch=p.probe_epochs[-1],
            split=p.splits[0],
            layers=tuple(spec.arch(p.arch).probe_layers()),
            metrics=metrics,
        )
        for p in plans
    ]


def read_layer(store, unit: IntraclassUnit, layer: str):
    """(sample_index, subclass, superclass, X float32) of one layer, by sample_index,
    at most :data:`MAX_ROWS_PER_SUBCLASS` rows per subclass."""
    columns = ["sample_index", "subclass", "superclass", S.EMBEDDING]
    parts, seen = [], {}
    for batch in store.embedding_batches(
        unit.experiment_id,
        unit.arch,
        layer,
        columns=columns,
        rows_per_batch=READ_BATCH_ROWS,
        run_id=unit.run_id,
        epoch=unit.epoch,
        split=unit.split,
    ):
        table = pa.Table.from_batches([batch])
        subclass = table.column("subclass").to_numpy()
        keep = np.zeros(len(subclass), dtype=bool)
        for c in np.unique(subclass):
            rows = np.flatnonzero(subclass == c)
            room = MAX_ROWS_PER_SUBCLASS - seen.get(c, 0)
            keep[rows[: max(0, room)]] = True
            seen[c] = seen.get(c, 0) + min(len(rows), max(0, room))
        if keep.any():
            table = table.filter(pa.array(keep))
            parts.append(
                (
                    table.column("sample_index").to_numpy(),
                    subclass[keep],
                    table.column("superclass").to_numpy(),
                    embedding_matrix(table),
                )
            )
    if not parts:
        raise ValueError(
            f"run {unit.run_id} stored no {unit.split} rows of layer {layer!r} at epoch "
            f"{unit.epoch}; run its extraction first"
        )
    index, subclass, superclass, X = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.argsort(index, kind="stable")
    return index[order], subclass[order], superclass[order], X[order]


def measure_run(store, unit: IntraclassUnit) -> dict[str, float]:
    """``{metric: value}`` of the unit's run (see the module docstring for the inputs)."""
    pre, index = [], None
    for layer in unit.layers:
        layer_index, subclass, superclass, X = read_layer(store, unit, layer)
        if index is not None and not np.array_equal(layer_index, index):
            raise ValueError(
                f"run {unit.run_id}: layers {unit.layers[0]!r} and {layer!r} hold other "
                f"{unit.split} samples; re-extract the run"
            )
        index = layer_index
        pre.append(X)
    values = {}
    if "c1" in unit.metrics:
        values["c1"] = intraclass_c1(pre, subclass, superclass)
    if "c2" in unit.metrics:
        activations = [np.maximum(X, 0) for X in pre]
        values["c2"] = intraclass_c2(activations, subclass, superclass, k=LAYERS_TOP_K)
    if "c3" in unit.metrics:
        values["c3"] = intraclass_c3(pre, superclass)
    if "c4" in unit.metrics:
        values["c4"] = intraclass_c4(pre, superclass, k=LAYERS_TOP_K)
    return values


def score_intraclass(store, unit: IntraclassUnit):
    """The run's c1-c4 as ``metrics`` rows, one pending unit."""
    base = {
        "experiment_id": unit.experiment_id,
        "run_id": unit.run_id,
        "dataset_id": unit.dataset_id,
        "arch": unit.arch,
        "seed": unit.seed,
        "epoch": unit.epoch,
        "layer": INTRACLASS_LAYER,
        "split": unit.split,
        "scope": "superclass",
        "method": INTRACLASS_METHOD,
        "overclustering_factor": 0,
        "n_clusters": 0,
    }
    records = [
        {**base, "metric": metric, "value": value}
        for metric, value in measure_run(store, unit).items()
    ]
    table = pa.Table.from_pylist(records, schema=_METRICS_FIELDS)
    return [store.write_fragments(S.METRICS, unit.unit_key, table)]
