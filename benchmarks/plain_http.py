"""A minimal-overhead baseline for `bench serve`: one layer's Arrow IPC stream over
plain HTTP/1.1.

No framework: blocking sockets (``TCP_NODELAY``, as asyncio sets for uvicorn), a thread
per connection, the rows read by the same query the service runs
(``storage.queries.layer_rows``) and each record batch handed to ``sendmsg`` with its
chunk framing, its vectors without a copy in Python (pyarrow's IPC writer passes a sink
the column buffers themselves). The service's answer costs what this one does plus
``RecordBatch.serialize``'s copy, uvicorn's joining each chunk with its framing (a
second copy) and the hand-over of each chunk from the thread that makes it to the event
loop; the ratio of the two says how much of that overhead the service carries on the
machine the benchmark ran on. It is one simple baseline, not an upper bound: it does
not overlap the scan with the sending, for one.

Usage (``bench_serve`` starts it): python benchmarks/plain_http.py STORE PORT EXPERIMENT
ARCH LAYER. ``GET /layer`` (no query string) answers the whole layer, ``GET /readyz``
200, anything else 404; request bodies are not read. Not a server for anything but
this measurement.
"""

from __future__ import annotations

import functools
import socket
import sys
import threading
from collections.abc import Iterator

import lance
import pyarrow as pa

from services.api.formats import ARROW_STREAM
from storage import EmbeddingStore
from storage.queries import layer_rows

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
    % ARROW_STREAM.encode()
)


class _Parts:
    """An output stream for pyarrow's IPC writer that keeps what it is given, the
    column buffers as themselves (small framing pieces arrive as ``bytes``)."""

    closed = False

    def __init__(self) -> None:
        self.parts: list = []

    def write(self, data) -> int:
        self.parts.append(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def taken(self) -> list:
        parts, self.parts = self.parts, []
        return parts


def stream_parts(store: EmbeddingStore, experiment: str, arch: str, layer: str) -> Iterator[list]:
    """The layer's IPC stream, one list of pieces per record batch (the schema goes with
    the first), then the end-of-stream marker."""
    rows = layer_rows(store, experiment, arch, layer)
    sink = _Parts()
    writer = pa.ipc.new_stream(sink, rows.schema)
    for batch in rows.batches:
        writer.write_batch(batch)
        yield sink.taken()
    writer.close()
    yield sink.taken()


def send_all(connection: socket.socket, parts: list) -> None:
    """Send ``parts`` in order with as few system calls as the socket allows."""
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        sent = connection.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]


def serve_connection(connection: socket.socket, answer) -> None:
    with connection, connection.makefile("rb") as requests:
        while request := requests.readline():
            while requests.readline() not in (b"\r\n", b""):  # the headers: none matter
                pass
            path = (request.split() + [b"", b""])[1]
            if path == b"/readyz":
                connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                continue
            if path != b"/layer":
                connection.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                continue
            head = [HEAD]  # goes out with the first chunk
            for parts in answer():
                size = sum(len(part) for part in parts)
                send_all(connection, [*head, b"%x\r\n" % size, *parts, b"\r\n"])
                head = []
            connection.sendall(b"0\r\n\r\n")


def main(argv: list[str]) -> None:
    root, port, experiment, arch, layer = argv
    store = EmbeddingStore(root, session=lance.Session())  # as the service opens it
    answer = functools.partial(stream_parts, store, experiment, arch, layer)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", int(port)))
        listener.listen()
        while True:
            connection, _ = listener.accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_quietly, args=(connection, answer), daemon=True).start()


def _quietly(connection: socket.socket, answer) -> None:
    try:
        serve_connection(connection, answer)
    except (ConnectionError, BrokenPipeError):
        pass  # the client went away: its business


if __name__ == "__main__":
    main(sys.argv[1:])
