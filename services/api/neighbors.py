"""``POST /v1/experiments/{name}/neighbors``: the k nearest rows of one layer.

The query is a stored sample (``sample_index`` of the same run, epoch and split)
or a vector; the search runs among the rows of one run at one epoch and split,
through the layer's vector index when it answers the asked distance (``stratalens
index``) and by an exact scan otherwise. The answer says which, and why.
"""

from __future__ import annotations

from typing import Literal

from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.api import formats
from services.api.deps import INT32, INT64_MAX, KEY_PATTERN, MAX_NAME_LENGTH, Name, StoreDep
from storage import EmbeddingStore, StoreError
from storage import index as I
from storage import queries as Q
from storage import schema as S
from storage.filters import where

MAX_DIMENSION = 65_536


class NeighborQuery(BaseModel):
    """One nearest-neighbour query; give ``run``, or ``seed`` (and ``dataset`` when the
    experiment has several), and exactly one of ``sample_index`` and ``vector``."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(max_length=MAX_NAME_LENGTH, description="architecture, e.g. small_cnn")
    layer: str = Field(max_length=MAX_NAME_LENGTH, description="probed layer, e.g. fc2")
    run: str | None = Field(None, pattern=KEY_PATTERN, description="run id (see /runs)")
    seed: int | None = Field(None, ge=INT32[0], le=INT32[1])
    dataset: str | None = Field(None, pattern=KEY_PATTERN, description="dataset id")
    epoch: int | None = Field(
        None, ge=INT32[0], le=INT32[1], description="probe epoch; default: the last stored"
    )
    split: str | None = Field(
        None, pattern=KEY_PATTERN, description="split searched; default: the only one stored"
    )
    k: int = Field(10, ge=1, le=I.MAX_K)
    sample_index: int | None = Field(None, ge=0, le=INT64_MAX)
    vector: list[float] | None = Field(None, min_length=1, max_length=MAX_DIMENSION)
    metric: Literal["cosine", "l2"] = I.DEFAULT_METRIC
    exact: bool = Field(False, description="scan every row even when an index exists")

    @model_validator(mode="after")
    def _one_query(self) -> NeighborQuery:
        if (self.sample_index is None) == (self.vector is None):
            raise ValueError("give exactly one of sample_index and vector")
        if self.run is None and self.seed is None:
            raise ValueError("give run, or seed (with dataset when there are several)")
        return self


def neighbors_route(name: Name, query: NeighborQuery, store: StoreDep) -> Response:
    """The ``k`` rows of the layer nearest to the sample or vector (cosine or L2 distance),
    nearest first, with how they were found (``search``: ``index`` or ``exact``)."""
    Q.check_layer(store, name, query.arch, query.layer)
    stored = Q.layer_scopes(store.layer_dataset(name, query.arch, query.layer))
    run_id = _run(store, name, query, stored)
    scope = {"run_id": run_id}
    scope["epoch"] = _one(query, "epoch", query.epoch, scope, stored)
    scope["split"] = _one(query, "split", query.split, scope, stored)
    if query.vector is not None:
        vector = query.vector
    else:
        vector = I.row_vector(
            store, name, query.arch, query.layer, sample_index=query.sample_index, **scope
        )
    found = I.nearest(
        store,
        name,
        query.arch,
        query.layer,
        vector,
        query.k,
        metric=query.metric,
        exact=query.exact,
        **scope,
    )
    index = found.index.__dict__ if found.index is not None else None
    return formats.json_response(
        {
            "search": found.search,
            "reason": found.reason,
            "metric": found.metric,
            "index": index,
            "run_id": run_id,
            "epoch": scope["epoch"],
            "split": scope["split"],
            "k": query.k,
            "neighbors": found.rows.to_pylist(),
        },
        rows=found.rows.num_rows,
    )


def _run(store: EmbeddingStore, name: str, query: NeighborQuery, stored: list[Q.Scope]) -> str:
    """The one run the query names (by id, or by seed and dataset)."""
    if query.run is not None and any(scope.run_id == query.run for scope in stored):
        return query.run
    runs = Q.distinct(store, S.RUNS, "run_id", experiment_id=name, arch=query.arch)
    if query.run is not None:
        raise Q.NotFoundError(
            f"run {query.run!r} has no rows in layer {query.layer!r} of experiment {name!r}; "
            f"its runs are {runs}"
        )
    matching = Q.distinct(
        store,
        S.RUNS,
        "run_id",
        experiment_id=name,
        arch=query.arch,
        seed=query.seed,
        dataset_id=query.dataset,
    )
    if len(matching) != 1:
        shown = where(seed=query.seed, dataset_id=query.dataset)
        raise (Q.NotFoundError if not matching else StoreError)(
            f"{len(matching)} runs of {query.arch!r} match {shown}; name one with run "
            f"(or seed and dataset): {runs}"
        )
    return matching[0]


def _one(
    query: NeighborQuery,
    column: str,
    asked: int | str | None,
    scope: dict,
    stored: list[Q.Scope],
) -> int | str:
    """The asked value of ``column`` if the run stored it; else the last (epoch) or the
    only one (split) stored with ``scope``."""
    values = sorted(
        {
            getattr(row, column)
            for row in stored
            if all(getattr(row, key) == value for key, value in scope.items())
        }
    )
    if asked is not None:
        if asked in values:
            return asked
        raise Q.NotFoundError(
            f"{column} {asked!r} is not stored for run {scope['run_id']!r} in layer "
            f"{query.layer!r}; stored: {values}"
        )
    if column == "epoch" and values:
        return values[-1]
    if len(values) != 1:
        raise StoreError(f"the run stores {column}s {values} in this layer; choose one")
    return values[0]
