"""Write endpoints (``/v1``): tag a snapshot, delete an experiment, compact the store.

Each needs ``Authorization: Bearer <token>`` equal to the server's
``STRATALENS_TOKEN``; a server started without one refuses every write (403).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api import formats
from services.api.deps import NOT_FOUND, Name, Problem, StoreDep
from storage import queries as Q

MAX_KEEP_VERSIONS = 1_000


def require_token(
    request: Request,
    authorization: Annotated[str | None, Header(max_length=4096)] = None,
) -> None:
    """403 when the server has no token configured; 401 unless the bearer token matches."""
    token = request.app.state.settings.token
    if not token:
        raise HTTPException(
            403,
            "writes are off: this server was started without STRATALENS_TOKEN; "
            "restart it with the variable set to allow them",
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise HTTPException(
            401,
            "this write needs the header 'Authorization: Bearer <token>' with the server's "
            "STRATALENS_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )


AUTH = {
    401: {"model": Problem, "description": "no or a wrong bearer token"},
    403: {"model": Problem, "description": "writes are off (no STRATALENS_TOKEN)"},
}
router = APIRouter(dependencies=[Depends(require_token)], tags=["writes"], responses=AUTH)


class TagRequest(BaseModel):
    """Name the current version of every table."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=128)


class CompactRequest(BaseModel):
    """Merge fragments, rebuild key indices, delete old untagged versions."""

    model_config = ConfigDict(extra="forbid")
    keep_versions: int = Field(1, ge=1, le=MAX_KEEP_VERSIONS)


@router.post("/tags")
def post_tag(body: TagRequest, store: StoreDep) -> Response:
    """Tag the current version of every table as ``name`` (a snapshot to read later)."""
    tables = store.tag_all(body.name)
    return formats.json_response({"tag": body.name, "tables": tables})


@router.delete("/experiments/{name}", responses=NOT_FOUND)
def delete_experiment(name: Name, store: StoreDep) -> Response:
    """Remove every row and embeddings table of one experiment."""
    store.delete_experiment(Q.check_experiment(store, name))
    return formats.json_response({"deleted": name})


@router.post("/compact")
def post_compact(store: StoreDep, body: CompactRequest | None = None) -> Response:
    """Compact every table (run it when no `stratalens run` writes to the store)."""
    keep = (body or CompactRequest()).keep_versions
    removed = store.compact(keep_versions=keep)
    return formats.json_response({"keep_versions": keep, "removed_bytes": removed})
