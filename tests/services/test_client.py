"""The service's Python client without a server: its Arrow reader over in-memory streams
(the live tests read real answers through it, in test_api_live.py)."""

import io
import json
import urllib.error
import urllib.parse

import numpy as np
import pyarrow as pa
import pytest

from services.api.client import ServiceError, _detail, _with_query, stream_reader


def stream_of(table: pa.Table, rows_per_batch: int) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=rows_per_batch)
    return sink.getvalue()


@pytest.fixture
def rows() -> pa.Table:
    rng = np.random.default_rng(0)
    n, d = 1_000, 64
    vectors = rng.standard_normal((n, d), dtype=np.float32)
    return pa.table(
        {
            "run_id": [f"run{i % 3}" for i in range(n)],
            "sample_index": np.arange(n, dtype=np.int64),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), d),
        }
    )


def test_reads_every_batch_into_arrows_pool(rows):
    data = stream_of(rows, rows_per_batch=128)
    expected = pa.ipc.open_stream(data).read_all()
    before = pa.total_allocated_bytes()
    got = stream_reader(io.BufferedReader(io.BytesIO(data))).read_all()
    assert got.equals(expected) and got.num_rows == rows.num_rows
    assert got.column("embedding").num_chunks == 8
    # the bodies were read into new pool buffers, not wrapped as the reader's bytes
    assert pa.total_allocated_bytes() - before >= rows.column("embedding").nbytes


def test_a_cut_stream_fails_naming_the_missing_bytes(rows):
    data = stream_of(rows, rows_per_batch=500)
    with pytest.raises(OSError, match="Expected to be able to read"):
        stream_reader(io.BufferedReader(io.BytesIO(data[: len(data) // 2]))).read_all()


class Arriving(io.RawIOBase):
    """A stream whose bytes arrive a piece at a time, counting what was read of it."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece, self.read_so_far = data, piece, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        got = self.data[self.read_so_far : self.read_so_far + min(len(buffer), self.piece)]
        buffer[: len(got)] = got
        self.read_so_far += len(got)
        return len(got)


def test_batches_are_read_as_they_arrive(rows):
    data = stream_of(rows, rows_per_batch=100)
    arriving = Arriving(data, piece=4096)
    reader = stream_reader(io.BufferedReader(arriving, buffer_size=4096))
    first = reader.read_next_batch()
    assert first.num_rows == 100
    assert arriving.read_so_far < len(data) / 5  # one batch of ten, not the stream
    rest = list(reader)
    assert pa.Table.from_batches([first, *rest]).equals(pa.ipc.open_stream(data).read_all())


@pytest.mark.parametrize(
    "body, sentence",
    [
        ({"detail": "no layer 'x'; the layers are: fc1, fc2"}, "no layer 'x'; the layers are"),
        ({"detail": [{"msg": "limit must be >= 0"}, {"msg": "k too large"}]}, "limit must"),
    ],
)
def test_error_answers_become_their_sentence(body, sentence):
    error = urllib.error.HTTPError(
        "http://x", 404, "Not Found", {}, io.BytesIO(json.dumps(body).encode())
    )
    detail = _detail(error)
    assert detail.startswith(sentence)
    assert str(ServiceError(404, detail)).startswith(f"404: {sentence}")


def test_queries_keep_commas_and_code_the_rest():
    params = {"sample_index": "7,2,11", "run": "exp/ds a/net&seed=1", "limit": 5}
    url = _with_query("http://127.0.0.1:8000/v1/experiments/e%20x/embeddings", params)
    assert "sample_index=7,2,11&" in url  # no %2C: no percent-coding pass on either side
    query = urllib.parse.urlsplit(url).query
    assert dict(urllib.parse.parse_qsl(query)) == {k: str(v) for k, v in params.items()}
    assert _with_query("http://h/x", None) == _with_query("http://h/x", {}) == "http://h/x"
