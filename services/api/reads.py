"""Read endpoints of the query service (``/v1``).

Names (experiment, arch, layer, dataset, split) are checked against the store's
own lists before a table path is built from them; filter values are typed and
pattern-checked before they become SQL literals.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from services.api import formats
from services.api.deps import (
    INT64_MAX,
    MAX_NAME_LENGTH,
    NOT_FOUND,
    Int32,
    Key,
    Limit,
    Name,
    Offset,
    StoreDep,
)
from services.api.matrices import compare_matrices, pair_matrices
from services.api.neighbors import neighbors_route
from services.api.settings import (
    JSON_MAX_CLUSTERING_ROWS,
    JSON_MAX_EMBEDDING_ROWS,
    JSON_MAX_TABLE_ROWS,
    MAX_SAMPLE_INDICES,
)
from services.plots import layer_order
from storage import StoreError
from storage import queries as Q
from storage import schema as S
from storage.queries import RowStream

router = APIRouter()

SAMPLE_INDEX_PATTERN = r"^[0-9]{1,19}(,[0-9]{1,19})*$"
STREAM_MEDIA = {
    formats.ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
    formats.NPY: {"schema": {"type": "string", "format": "binary"}},
    formats.CSV: {"schema": {"type": "string"}},
}


@router.get("/experiments", tags=["catalog"])
def list_experiments(store: StoreDep) -> Response:
    """Every experiment: name, spec, created_at and number of finished runs."""
    return formats.json_response(Q.experiments(store))


@router.get("/experiments/{name}/runs", tags=["catalog"], responses=NOT_FOUND)
def list_runs(store: StoreDep, name: Name) -> Response:
    """The rows of the ``runs`` table for one experiment (accuracies, seeds, timings)."""
    rows = Q.runs(store, name).to_pylist()
    return formats.json_response(rows, rows=len(rows))


@router.get("/experiments/{name}/layers", tags=["catalog"], responses=NOT_FOUND)
def list_layers(store: StoreDep, name: Name) -> Response:
    """The stored layers: ``[{arch, layer, dim, rows, dtype}]``, input to output per arch."""
    found = Q.layers(store, name)
    found.sort(key=lambda info: (info.arch, _layer_rank(info.arch, info.layer)))
    return formats.json_response([info.__dict__ for info in found])


@router.get(
    "/experiments/{name}/embeddings",
    tags=["rows"],
    responses={200: {"content": STREAM_MEDIA}, **NOT_FOUND},
)
def get_embeddings(
    store: StoreDep,
    name: Name,
    arch: Annotated[str, Query(max_length=MAX_NAME_LENGTH)],
    layer: Annotated[str, Query(max_length=MAX_NAME_LENGTH)],
    run: Key = None,
    seed: Int32 = None,
    epoch: Int32 = None,
    split: Key = None,
    superclass: Int32 = None,
    dataset: Key = None,
    sample_index: Annotated[
        str | None,
        Query(
            pattern=SAMPLE_INDEX_PATTERN,
            max_length=MAX_SAMPLE_INDICES * 20,
            description=f"one or more comma-separated indices (at most {MAX_SAMPLE_INDICES})",
        ),
    ] = None,
    limit: Limit = None,
    offset: Offset = 0,
    format: Literal["arrow", "npy", "json"] = "arrow",
) -> Response:
    """Rows of one layer (key columns and the embedding), streamed batch by batch.

    ``arrow`` (default): an Arrow IPC stream; ``npy``: the (rows, d) float32 array;
    ``json``: at most ``JSON_MAX_EMBEDDING_ROWS`` rows.
    """
    stream = Q.layer_rows(
        store,
        name,
        arch,
        layer,
        limit=limit,
        offset=offset,
        run_id=run,
        seed=seed,
        epoch=epoch,
        split=split,
        superclass=superclass,
        dataset_id=dataset,
        sample_index=_indices(sample_index),
        count=format != "arrow",  # an Arrow stream needs no count up front
    )
    return _answer(stream, format, f"{name}-{arch}-{layer}", JSON_MAX_EMBEDDING_ROWS)


@router.get(
    "/experiments/{name}/metrics",
    tags=["rows"],
    responses={200: {"content": STREAM_MEDIA}, **NOT_FOUND},
)
def get_metrics(
    store: StoreDep,
    name: Name,
    run: Key = None,
    seed: Int32 = None,
    dataset: Key = None,
    arch: Key = None,
    epoch: Int32 = None,
    layer: Key = None,
    split: Key = None,
    scope: Key = None,
    method: Key = None,
    factor: Int32 = None,
    metric: Key = None,
    limit: Limit = None,
    offset: Offset = 0,
    format: Literal["json", "csv", "arrow"] = "json",
) -> Response:
    """Rows of the ``metrics`` table: one score of one clustering (or layer) at one epoch."""
    stream = Q.table_rows(
        store,
        S.METRICS,
        name,
        limit=limit,
        offset=offset,
        run_id=run,
        seed=seed,
        dataset_id=dataset,
        arch=arch,
        epoch=epoch,
        layer=layer,
        split=split,
        scope=scope,
        method=method,
        overclustering_factor=factor,
        metric=metric,
    )
    return _answer(stream, format, f"{name}-metrics", JSON_MAX_TABLE_ROWS)


@router.get(
    "/experiments/{name}/pairs",
    tags=["rows"],
    responses={200: {"content": STREAM_MEDIA}, **NOT_FOUND},
)
def get_pairs(
    store: StoreDep,
    name: Name,
    dataset: Key = None,
    arch: Key = None,
    epoch: Int32 = None,
    split: Key = None,
    scope: Key = None,
    method: Key = None,
    factor: Int32 = None,
    metric: Key = None,
    seed_a: Int32 = None,
    seed_b: Int32 = None,
    layer_a: Key = None,
    layer_b: Key = None,
    run_a: Key = None,
    run_b: Key = None,
    experiment_b: Key = None,
    arch_b: Key = None,
    epoch_b: Int32 = None,
    shape: Literal["rows", "matrix"] = "rows",
    source: Literal["seeds", "compare"] = "seeds",
    limit: Limit = None,
    offset: Offset = 0,
    format: Literal["json", "csv", "arrow"] = "json",
) -> Response:
    """Rows of the ``pairs`` table (a score between seed A's and seed B's clusterings of two
    layers), or with ``shape=matrix`` one layer x layer matrix per pair of seeds (JSON; the
    filters must leave one dataset, arch, epoch, method, factor and metric; mean over scopes).
    ``source=compare`` with ``shape=matrix``: the rows of ``stratalens compare`` with this
    experiment as side A, one layers-of-A x layers-of-B matrix per pair of sides (side B
    narrowed by ``experiment_b``, ``arch_b``, ``epoch_b``).
    """
    conditions = dict(
        dataset_id=dataset,
        arch=arch,
        epoch=epoch,
        split=split,
        scope=scope,
        method=method,
        overclustering_factor=factor,
        metric=metric,
        seed_a=seed_a,
        seed_b=seed_b,
        layer_a=layer_a,
        layer_b=layer_b,
        run_a=run_a,
        run_b=run_b,
        experiment_b=experiment_b,
        arch_b=arch_b,
        epoch_b=epoch_b,
    )
    if shape == "matrix" and source == "compare":
        return formats.json_response(compare_matrices(store, name, **conditions))
    if shape == "matrix":
        return formats.json_response(pair_matrices(store, name, **conditions))
    stream = Q.table_rows(store, S.PAIRS, name, limit=limit, offset=offset, **conditions)
    return _answer(stream, format, f"{name}-pairs", JSON_MAX_TABLE_ROWS)


@router.get(
    "/experiments/{name}/clusterings",
    tags=["rows"],
    responses={200: {"content": STREAM_MEDIA}, **NOT_FOUND},
)
def get_clusterings(
    store: StoreDep,
    name: Name,
    run: Key = None,
    seed: Int32 = None,
    dataset: Key = None,
    arch: Key = None,
    layer: Key = None,
    epoch: Int32 = None,
    split: Key = None,
    scope: Key = None,
    method: Key = None,
    factor: Int32 = None,
    limit: Limit = None,
    offset: Offset = 0,
    format: Literal["json", "arrow"] = "json",
) -> Response:
    """Stored clusterings: their keys, ``sample_index`` and ``labels`` lists (equal length)."""
    stream = Q.table_rows(
        store,
        S.CLUSTERINGS,
        name,
        row_bytes=1 << 16,
        limit=limit,
        offset=offset,
        run_id=run,
        seed=seed,
        dataset_id=dataset,
        arch=arch,
        layer=layer,
        epoch=epoch,
        split=split,
        scope=scope,
        method=method,
        overclustering_factor=factor,
    )
    return _answer(stream, format, f"{name}-clusterings", JSON_MAX_CLUSTERING_ROWS)


@router.get(
    "/samples/{dataset_id}/{split}/{sample_index}/thumbnail",
    tags=["samples"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
def get_thumbnail(
    store: StoreDep,
    dataset_id: Annotated[str, Path(max_length=MAX_NAME_LENGTH)],
    split: Annotated[str, Path(max_length=MAX_NAME_LENGTH)],
    sample_index: Annotated[int, Path(ge=0, le=INT64_MAX)],
) -> Response:
    """The stored PNG thumbnail of one sample (404 if the split was stored without them)."""
    png = Q.thumbnail(store, dataset_id, split, sample_index)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


router.add_api_route(
    "/experiments/{name}/neighbors",
    neighbors_route,
    methods=["POST"],
    tags=["neighbors"],
    responses=NOT_FOUND,
)


def _answer(stream: RowStream, format: str, filename: str, json_max_rows: int) -> Response:
    """``stream`` in the asked format; JSON only up to ``json_max_rows`` rows (else 413)."""
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    if format == "arrow":
        return formats.arrow_response(stream, filename)
    if format == "npy":
        return formats.npy_response(stream, filename)
    if format == "csv":
        if any(f.type.num_fields for f in stream.schema):
            raise StoreError("CSV holds no list columns; ask for format=json or format=arrow")
        return formats.csv_response(stream, filename)
    if stream.rows > json_max_rows:
        raise HTTPException(
            413,
            f"{stream.rows} rows match, and a JSON answer holds at most {json_max_rows}; "
            "narrow the filters, page with limit and offset, or ask for format=arrow",
        )
    return formats.json_response(formats.json_rows(stream), rows=stream.rows)


def _indices(text: str | None) -> list[int] | None:
    """The comma-separated sample indices of a query, checked for count and range."""
    if text is None:
        return None
    values = [int(part) for part in text.split(",")]
    if len(values) > MAX_SAMPLE_INDICES:
        raise StoreError(
            f"sample_index lists {len(values)} values; ask for at most {MAX_SAMPLE_INDICES} "
            "at a time"
        )
    if max(values) > INT64_MAX:
        raise StoreError(f"sample_index {max(values)} is past the int64 range of the column")
    return sorted(set(values))


def _layer_rank(arch: str, layer: str) -> tuple[int, str]:
    """Input-to-output position of a layer of a registered arch; others after, by name."""
    try:
        order = layer_order(arch)
    except (KeyError, ValueError):
        return 1 << 30, layer
    return (order.index(layer), layer) if layer in order else (1 << 30, layer)
