"""Reading the query service's Arrow answers from Python.

Standard library HTTP and pyarrow, nothing else::

    from services.api.client import embeddings
    rows = embeddings("http://127.0.0.1:8000", "quickstart", arch="small_cnn", layer="fc2")

Any Arrow reader can read the answers (e.g. ``pyarrow.ipc.open_stream(urlopen(url))``);
this one reads each record batch's body straight into memory of Arrow's pool instead of
a new ``bytes`` object. The pool reuses what it freed, where fresh memory is mapped by
the kernel page by page: fetching a 100 MB layer over loopback, this cut the client's
CPU from 67 to 23 ms and its wall time from 86 to 58 ms (best of 15,
``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from services.api.formats import ARROW_STREAM

# Seconds to wait for the server to connect or to send more of an answer.
TIMEOUT_S = 300.0


class ServiceError(RuntimeError):
    """The service answered with an error status; ``detail`` is its sentence."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def embeddings(
    base_url: str, experiment: str, *, timeout: float = TIMEOUT_S, **filters: Any
) -> pa.Table:
    """The embeddings of ``experiment`` matching ``filters``, their key columns and the
    embedding as one table. ``arch`` and ``layer`` are required; ``run``, ``seed``,
    ``epoch``, ``split``, ``superclass``, ``dataset``, ``sample_index`` (one, a list or
    an array, or comma-separated), ``limit`` and ``offset`` narrow the rows. For more
    rows than fit in memory, :func:`embedding_batches`."""
    return fetch_table(*_embeddings_query(base_url, experiment, filters), timeout)


def embedding_batches(
    base_url: str, experiment: str, *, timeout: float = TIMEOUT_S, **filters: Any
) -> Iterator[pa.RecordBatch]:
    """:func:`embeddings` a record batch (about 1 MiB) at a time, as they arrive: a layer
    of any size is read holding one batch."""
    return fetch_batches(*_embeddings_query(base_url, experiment, filters), timeout)


def _embeddings_query(
    base_url: str, experiment: str, filters: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    picked = filters.get("sample_index")
    if picked is not None and not isinstance(picked, str | int):  # a list, an array
        filters["sample_index"] = ",".join(str(int(i)) for i in picked)
    path = f"/v1/experiments/{urllib.parse.quote(experiment, safe='')}/embeddings"
    return base_url.rstrip("/") + path, filters | {"format": "arrow"}


def fetch_table(
    url: str, params: Mapping[str, Any] | None = None, timeout: float = TIMEOUT_S
) -> pa.Table:
    """GET ``url`` with the query ``params`` and read its Arrow IPC stream answer whole
    (embeddings, and metrics, pairs or clusterings asked with ``format=arrow``)."""
    with _answer(url, params, timeout) as reader:
        return reader.read_all()


def fetch_batches(
    url: str, params: Mapping[str, Any] | None = None, timeout: float = TIMEOUT_S
) -> Iterator[pa.RecordBatch]:
    """:func:`fetch_table` a record batch at a time, each read as it arrives."""
    with _answer(url, params, timeout) as reader:
        yield from reader


@contextmanager
def _answer(
    url: str, params: Mapping[str, Any] | None, timeout: float
) -> Iterator[pa.RecordBatchStreamReader]:
    """The Arrow answer to GET ``url``, open for reading; its errors as one sentence."""
    url = _with_query(url, params)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise ServiceError(error.code, _detail(error)) from None
    except urllib.error.URLError as error:
        raise ConnectionError(
            f"could not reach {url} ({error.reason}); is `stratalens serve` running there?"
        ) from None
    with response:
        kind = response.headers.get_content_type()
        if kind != ARROW_STREAM:
            raise ValueError(f"{url} answered {kind}, not an Arrow IPC stream; ask format=arrow")
        try:
            yield stream_reader(response)
        except (OSError, pa.ArrowInvalid) as error:
            raise ConnectionError(
                f"the answer from {url} was cut off ({error}); the server's log says why"
            ) from error


def _with_query(url: str, params: Mapping[str, Any] | None) -> str:
    """``url`` with the query ``params``, commas as they are (RFC 3986 allows them in a
    query): a list of 1,000 sample indices then costs neither side a pass of percent
    coding (0.6 ms of a 7.9 ms fetch of those rows, ``benchmarks/RESULTS.md``)."""
    return f"{url}?{urllib.parse.urlencode(params, safe=',')}" if params else url


def arrow_table(data: bytes) -> pa.Table:
    """An Arrow IPC stream answer already received whole (``response.content``)."""
    return pa.ipc.open_stream(data).read_all()


def stream_reader(response: Any) -> pa.RecordBatchStreamReader:
    """pyarrow's reader of the Arrow IPC stream in ``response`` (anything with ``read``
    and ``readinto``, such as ``urlopen``'s answer), its batches read into Arrow's
    memory pool one at a time as they are asked for."""
    return pa.ipc.open_stream(_PoolReader(response))


class _PoolReader:
    """``response`` as pyarrow's IPC reader asks for it: the small reads of message
    lengths and metadata as ``bytes``, each message body through ``read_buffer`` into a
    buffer of Arrow's default memory pool (pyarrow calls ``read_buffer`` where a file
    object has one)."""

    closed = False

    def __init__(self, response: Any) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._response.read(size)

    def read_buffer(self, size: int) -> pa.Buffer:
        buffer = pa.allocate_buffer(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            got = self._response.readinto(view[filled:])
            if not got:  # the stream ended early: pyarrow names the bytes missing
                return buffer.slice(0, filled)
            filled += got
        return buffer


def _detail(error: urllib.error.HTTPError) -> str:
    """The sentence of an error answer (``{"detail": ...}``), or its raw text."""
    body = error.read().decode(errors="replace")
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return body.strip() or str(error.reason)
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(str(item.get("msg", item)) for item in detail)
    return str(detail)
