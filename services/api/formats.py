"""Answer bodies: Arrow IPC streams, .npy and CSV streamed batch by batch, and JSON.

A streamed answer holds one record batch in memory at a time, whatever the
number of rows; one that ends within the first chunks the route makes goes out
whole, with its length. JSON answers are built whole, so their callers cap the rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import math
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
from fastapi.responses import JSONResponse, Response, StreamingResponse

from storage import schema as S
from storage.queries import RowStream

ARROW_STREAM = "application/vnd.apache.arrow.stream"
NPY = "application/x-npy"
CSV = "text/csv"
JSON = "application/json"
# The end-of-stream marker of the Arrow IPC stream format: continuation, zero length.
ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
ROW_COUNT_HEADER = "X-Row-Count"
# Chunks of a streamed answer made by the route itself (see _prefetched), and at most
# made ahead of the socket by its thread after that (see _made_ahead).
PREFETCH_CHUNKS = 4
READ_AHEAD_CHUNKS = 4
# What _made_ahead's thread sends when the chunks are all made.
_END = object()


def arrow_response(stream: RowStream, filename: str) -> Response:
    """The rows as an Arrow IPC stream (schema, then one message per record batch)."""

    def chunks() -> Iterator[bytes | memoryview]:
        yield memoryview(stream.schema.serialize())
        for batch in stream.batches:
            yield memoryview(batch.serialize())
        yield ARROW_EOS

    return _streaming(chunks(), ARROW_STREAM, stream.rows, f"{filename}.arrows")


def npy_response(stream: RowStream, filename: str) -> Response:
    """The ``embedding`` column as one (rows, d) float32 ``.npy`` array.

    Its length is known up front, so it is sent with a Content-Length (no chunk framing).
    """
    dim = stream.schema.field(S.EMBEDDING).type.list_size
    dtype = np.dtype(np.float32)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (stream.rows, dim),
        },
    )

    def chunks() -> Iterator[bytes | memoryview]:
        yield header.getvalue()
        for batch in stream.batches:
            vectors = batch.column(S.EMBEDDING).flatten().to_numpy(zero_copy_only=False)
            yield memoryview(vectors.astype(dtype, copy=False)).cast("B")  # len() in bytes

    length = len(header.getvalue()) + stream.rows * dim * dtype.itemsize
    response = _streaming(chunks(), NPY, stream.rows, f"{filename}.npy")
    response.headers["Content-Length"] = str(length)
    return response


def csv_response(stream: RowStream, filename: str) -> Response:
    """The rows as CSV with a header line (list columns are not allowed here)."""

    def chunks() -> Iterator[bytes]:
        header = True
        for batch in stream.batches:
            out = io.BytesIO()
            pacsv.write_csv(batch, out, pacsv.WriteOptions(include_header=header))
            header = False
            yield out.getvalue()
        if header:  # no rows: the header alone
            out = io.BytesIO()
            pacsv.write_csv(stream.schema.empty_table(), out)
            yield out.getvalue()

    return _streaming(chunks(), CSV, stream.rows, f"{filename}.csv")


def json_rows(stream: RowStream) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (callers cap ``stream.rows`` first)."""
    return [jsonable(row) for batch in stream.batches for row in batch.to_pylist()]


def json_response(content: Any, *, rows: int | None = None) -> JSONResponse:
    """``content`` as JSON; NaN and infinities become null (JSON has neither)."""
    headers = {ROW_COUNT_HEADER: str(rows)} if rows is not None else None
    return JSONResponse(jsonable(content), headers=headers)


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None, datetimes as ISO 8601 and arrays as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return None  # thumbnails have their own endpoint
    return value


def _streaming(
    chunks: Iterator[bytes | memoryview], media_type: str, rows: int | None, filename: str
) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if rows is not None:
        headers[ROW_COUNT_HEADER] = str(rows)
    body = _prefetched(chunks)
    if isinstance(body, bytes):
        return Response(body, media_type=media_type, headers=headers)
    return StreamingResponse(body, media_type=media_type, headers=headers)


def _prefetched(chunks: Iterator[bytes | memoryview]) -> bytes | AsyncIterator[bytes | memoryview]:
    """The answer whole if it ends within its first ``PREFETCH_CHUNKS`` chunks, else its
    chunks, the first ``PREFETCH_CHUNKS`` made now.

    The routes run on a worker thread, so the first chunks are made there: a query that
    fails early (a bad filter Lance refuses) still answers with its error status, before
    any byte is sent, and a short answer (a take of named rows: schema, batch, end) goes
    out as one body with its Content-Length, without another thread or chunk framing
    (1,000 named rows of a 50,000 x 512 layer: 8.6 ms median against 9.0 ms streamed,
    one row 3.1 against 3.4 ms; 200 alternated requests each, ``benchmarks/RESULTS.md``).
    The rest of a longer answer is made by :func:`_made_ahead`, at most
    ``READ_AHEAD_CHUNKS`` ahead of the socket.
    """
    first = list(itertools.islice(chunks, PREFETCH_CHUNKS))
    if len(first) < PREFETCH_CHUNKS:
        return b"".join(first)

    async def body() -> AsyncIterator[bytes | memoryview]:
        for chunk in first:
            yield chunk
        async for chunk in _made_ahead(chunks):
            yield chunk

    return body()


async def _made_ahead(chunks: Iterator[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    """``chunks``, made on a thread of their own up to ``READ_AHEAD_CHUNKS`` ahead of
    the event loop that sends them.

    Starlette asks a worker thread for each chunk of a plain iterator in turn, so the
    thread waits while the loop sends a chunk and the socket waits while the thread
    makes the next. Made ahead, a 100 MB layer went out in 61.5-67.8 ms (median of 30-40
    fetches) against 72.1-75.4 ms, with 72-80 ms of the server's CPU against 82-87 ms
    (three A/Bs on 2 cores, ``benchmarks/RESULTS.md``). If the client goes away, the
    thread stops at its next chunk and closes ``chunks``.
    """
    loop = asyncio.get_running_loop()
    made: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(READ_AHEAD_CHUNKS)
    stop = threading.Event()

    def send(item: object) -> None:
        try:
            loop.call_soon_threadsafe(made.put_nowait, item)
        except RuntimeError:  # the loop has closed: the server is stopping
            stop.set()

    def make() -> None:
        try:
            for chunk in chunks:
                room.acquire()
                if stop.is_set():
                    return
                send(chunk)
            send(_END)
        except BaseException as error:  # raised to the sender, which ends the answer
            send(error)
        finally:
            getattr(chunks, "close", lambda: None)()

    threading.Thread(target=make, name="stratalens-answer", daemon=True).start()
    try:
        while (chunk := await made.get()) is not _END:
            if isinstance(chunk, BaseException):
                raise chunk
            room.release()
            yield chunk
    finally:
        stop.set()
        room.release()  # wakes a thread waiting for room, which then stops
