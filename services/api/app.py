"""The query service's FastAPI app: ``create_app(settings)``.

Read endpoints under ``/v1`` (:mod:`services.api.reads`), writes behind a bearer
token (:mod:`services.api.writes`), the dashboard at ``/``
(:mod:`services.dashboard`), ``/healthz`` and ``/readyz``; OpenAPI at ``/docs``.
The same app runs under uvicorn (``stratalens serve``) and as a Ray Serve
deployment (``stratalens serve --ray``, :mod:`services.api.ray_serve`).

Every error is one sentence in ``{"detail": ...}``: 404 for a name the store does
not hold (naming those it does), 413 for too large a body or JSON answer, 422 for
a malformed or inconsistent request. Nothing a client sends reaches a 500.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.deps import ERRORS
from services.api.settings import MAX_BODY_BYTES, ServiceSettings
from storage import EmbeddingStore, StoreError
from storage.queries import NotFoundError, experiment_names

API_VERSION = "v1"
log = logging.getLogger("stratalens.serve")


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The query service over ``settings.store`` (default: settings from the environment)."""
    import lance  # after storage, which sets Lance's log level

    from services import dashboard
    from services.api import reads, writes

    settings = settings or ServiceSettings.from_env()
    app = FastAPI(
        title="stratalens query service",
        version=API_VERSION,
        description=(
            "Read a stratalens store over HTTP: experiments, runs, layers, embeddings "
            "(Arrow IPC streams), metrics, cross-seed pairs, clusterings, thumbnails and "
            "nearest neighbours. Writes need `Authorization: Bearer <STRATALENS_TOKEN>`."
        ),
    )
    app.state.settings = settings
    # One Lance session for every read: vector indices and file metadata stay cached.
    app.state.store = EmbeddingStore(
        settings.store, storage_options=settings.storage_options, session=lance.Session()
    )
    app.include_router(reads.router, prefix=f"/{API_VERSION}", responses=ERRORS)
    app.include_router(writes.router, prefix=f"/{API_VERSION}", responses=ERRORS)
    app.include_router(dashboard.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    app.add_api_route("/readyz", readyz, methods=["GET"], tags=["health"])
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(StoreError, _bad_request)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    return app


def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


def readyz(request: Request) -> JSONResponse:
    """The store answers: its experiments table can be read (503 with the reason if not)."""
    store: EmbeddingStore = request.app.state.store
    try:
        store.check_reachable()
        if not store.is_object_store and not os.path.isdir(store.root):
            raise FileNotFoundError(f"no folder {store.root}")
        names = experiment_names(store)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse(
            {"detail": f"store {store.root!r} does not answer ({reason}); check --store"},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "store": store.root, "experiments": len(names)})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether announced by
    Content-Length or sent in chunks (ASGI middleware, so streamed answers pass through)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        if length is None and headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"the request body is over {self.max_bytes} bytes; send a smaller one"},
            status_code=413,
        )
        await response(scope, receive, send)


def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no endpoint at {request.url.path}; see /docs for the API"
    elif exc.status_code == 400 and "parsing the body" in str(detail):
        detail = "the request body is not valid JSON in UTF-8; send a JSON object as /docs shows"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors as one sentence about the first bad value."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "it does not parse")
        return JSONResponse(
            {
                "detail": f"the request body is not valid JSON ({reason}); send a JSON object "
                "as /docs shows"
            },
            status_code=422,
        )
    where = [str(part) for part in first.get("loc", ())]
    place = {"query": "query parameter", "path": "path parameter", "body": "body field"}
    if where and where[0] in place:
        kind, name = place[where[0]], ".".join(where[1:]) or "(the body)"
    else:
        kind, name = "value", ".".join(where) or "(the request)"
    got = first.get("input")
    shown = "" if got is None or isinstance(got, dict | list) else f", got {str(got)[:80]!r}"
    message = str(first.get("msg", "is invalid")).rstrip(".")
    if message[1:2].islower():  # "Field required" -> "field required", but keep "JSON"
        message = message[0].lower() + message[1:]
    more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return JSONResponse(
        {"detail": f"{kind} {name!r}: {message}{shown}{more}; see /docs for the accepted values"},
        status_code=422,
    )
