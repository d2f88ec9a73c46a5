"""What the endpoints share: the store of the app, and the types of their parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel

from storage import EmbeddingStore

INT32 = (-(2**31), 2**31 - 1)
INT64_MAX = 2**63 - 1
MAX_OFFSET = 2**53  # past any table's row count, and exact in JSON
# Key values (run ids, dataset ids, scopes, metrics, splits): what the pipeline writes.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=/+-]{0,255}$"
MAX_NAME_LENGTH = 256


def get_store(request: Request) -> EmbeddingStore:
    """The store the app serves."""
    return request.app.state.store


StoreDep = Annotated[EmbeddingStore, Depends(get_store)]
Key = Annotated[str | None, Query(pattern=KEY_PATTERN)]
Int32 = Annotated[int | None, Query(ge=INT32[0], le=INT32[1])]
Limit = Annotated[int | None, Query(ge=1, le=MAX_OFFSET, description="at most this many rows")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="skip this many matching rows")]
Name = Annotated[
    str, Path(max_length=MAX_NAME_LENGTH, description="experiment name (see /v1/experiments)")
]


class Problem(BaseModel):
    """Every error answer: one sentence naming the bad value and the fix."""

    detail: str


NOT_FOUND = {
    404: {
        "model": Problem,
        "description": "a name the store does not hold; the detail lists those it does",
    }
}
# Declared for every endpoint (FastAPI would otherwise document its list-shaped 422).
ERRORS = {
    400: {"model": Problem, "description": "the body is not JSON"},
    413: {"model": Problem, "description": "the body, or a JSON answer, is too large"},
    422: {"model": Problem, "description": "a malformed or inconsistent request"},
}
