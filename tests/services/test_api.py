"""The query service's read endpoints, with FastAPI's test client over a store written by
hand (tests/services/api_store.py): each answer equals a direct read of the same rows."""

import asyncio
import io
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from fastapi.testclient import TestClient

import storage.queries
from services.api import ServiceSettings, create_app
from services.api.client import arrow_table
from services.api.formats import (
    PREFETCH_CHUNKS,
    READ_AHEAD_CHUNKS,
    _made_ahead,
    _prefetched,
)
from storage import embedding_matrix
from storage import schema as S
from storage.filters import where
from tests.services import api_store as H

URL = f"/v1/experiments/{H.EXPERIMENT}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return H.build(str(tmp_path_factory.mktemp("api") / "store"))


@pytest.fixture(scope="module")
def client(store):
    return TestClient(create_app(ServiceSettings(store=store.root)))


def detail(response) -> str:
    return response.json()["detail"]


def test_health_and_readiness(client, tmp_path):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["experiments"] == 2
    missing = TestClient(create_app(ServiceSettings(store=str(tmp_path / "nowhere"))))
    assert missing.get("/readyz").status_code == 503
    assert "does not answer" in detail(missing.get("/readyz"))


def test_experiments_runs_and_layers(client, store):
    experiments = client.get("/v1/experiments").json()
    assert [(e["name"], e["runs"]) for e in experiments] == [("exp", 3), ("other", 1)]
    assert experiments[0]["spec"] == {"name": "exp"}
    assert experiments[0]["created_at"].startswith("2026-01-02T03:04:05")
    runs = client.get(f"{URL}/runs").json()
    direct = store.read(S.RUNS, filter=where(experiment_id="exp")).to_pylist()
    assert sorted(r["run_id"] for r in runs) == sorted(r["run_id"] for r in direct)
    assert [r["seed"] for r in runs] == [0, 1, 0]  # by dataset, arch, seed
    assert runs[2]["test_accuracy"] is None  # NaN is null in JSON
    assert "unit_key" not in runs[0]
    layers = client.get(f"{URL}/layers").json()
    rows = len(H.RUNS) * len(H.EPOCHS) * sum(H.SPLITS.values())
    assert layers == [
        {"arch": "small_cnn", "layer": "conv1", "dim": 4, "rows": rows, "dtype": "float32"},
        {"arch": "small_cnn", "layer": "fc2", "dim": 8, "rows": rows, "dtype": "float32"},
    ]
    assert client.get("/v1/experiments/other/layers").json() == []


def test_unknown_names_are_404s_that_list_what_exists(client):
    answer = client.get("/v1/experiments/nope/runs")
    assert answer.status_code == 404
    assert detail(answer) == "experiment 'nope' is not in the store; it holds ['exp', 'other']"
    answer = client.get(f"{URL}/embeddings", params={"arch": "vit", "layer": "fc2"})
    assert answer.status_code == 404 and "stored archs are ['small_cnn']" in detail(answer)
    answer = client.get(f"{URL}/embeddings", params={"arch": "small_cnn", "layer": "fc9"})
    assert answer.status_code == 404 and "stored layers are ['conv1', 'fc2']" in detail(answer)
    assert client.get("/v1/nothing").status_code == 404


@pytest.mark.parametrize(
    "path, params",
    [
        ("/v1/experiments/..%2F..%2Fetc/runs", {}),
        ("/v1/experiments/%2E%2E/runs", {}),
        ("/v1/experiments/exp%2F..%2Fother/layers", {}),
        (f"{URL}/embeddings", {"arch": "..", "layer": "fc2"}),
        (f"{URL}/embeddings", {"arch": "small_cnn/../../..", "layer": "fc2"}),
        (f"{URL}/embeddings", {"arch": "small_cnn", "layer": "../fc2"}),
        (f"{URL}/embeddings", {"arch": "small_cnn", "layer": "fc2/../conv1"}),
        ("/v1/samples/..%2F..%2Fruns/test/1/thumbnail", {}),
        ("/v1/samples/ds-a/..%2F..%2F/1/thumbnail", {}),
    ],
)
def test_path_traversal_finds_nothing(client, path, params):
    answer = client.get(path, params=params)
    assert answer.status_code == 404, answer.text
    assert "detail" in answer.json()


def test_embeddings_as_arrow_equal_a_direct_lance_read(client, store):
    params = {"arch": "small_cnn", "layer": "fc2", "seed": 1, "epoch": 2, "split": "test"}
    answer = client.get(f"{URL}/embeddings", params=params)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/vnd.apache.arrow.stream"
    got = arrow_table(answer.content)
    direct = store.embeddings(
        "exp", "small_cnn", "fc2", seed=1, epoch=2, split="test", columns=got.schema.names
    )
    assert got.equals(direct)
    assert got.num_rows == H.SPLITS["test"]
    np.testing.assert_array_equal(embedding_matrix(got), H.vectors("ds-a", 1, 2, "test", "fc2"))


def test_embeddings_stream_batch_by_batch(client, store, monkeypatch):
    monkeypatch.setattr(storage.queries, "QUERY_BATCH_BYTES", 5 * (8 * 4 + 64))  # 5 rows
    params = {"arch": "small_cnn", "layer": "fc2", "run": H.run_id("ds-a", 0)}
    answer = client.get(f"{URL}/embeddings", params=params)
    assert "content-length" not in answer.headers  # streamed as made, not sized
    reader = pa.ipc.open_stream(answer.content)
    batches = list(reader)
    rows = len(H.EPOCHS) * sum(H.SPLITS.values())
    assert [b.num_rows for b in batches] == [5] * (rows // 5) + ([rows % 5] if rows % 5 else [])
    direct = store.embeddings("exp", "small_cnn", "fc2", run_id=H.run_id("ds-a", 0))
    assert pa.Table.from_batches(batches).equals(direct.select(reader.schema.names))


def test_embeddings_by_sample_index_limit_offset_and_formats(client, store):
    base = {"arch": "small_cnn", "layer": "conv1", "seed": 0, "dataset": "ds-a", "epoch": 1}
    picked = client.get(f"{URL}/embeddings", params=base | {"sample_index": "7,2,11,2"})
    got = arrow_table(picked.content)
    assert sorted(got.column("sample_index").to_pylist()) == [2, 2, 7, 11]  # test and train
    assert set(got.column("split").to_pylist()) == {"test", "train"}
    assert int(picked.headers["x-row-count"]) == 4  # taken by row id: counted for free
    assert int(picked.headers["content-length"]) == len(picked.content)  # short: sent whole
    everything = store.embeddings(
        "exp", "small_cnn", "conv1", seed=0, dataset_id="ds-a", epoch=1
    ).drop_columns(["unit_key"])
    in_order = everything.filter(pc.is_in(everything["sample_index"], pa.array([2, 7, 11])))
    assert got.equals(in_order.select(got.schema.names))  # in table order, as a scan
    named_page = client.get(
        f"{URL}/embeddings", params=base | {"sample_index": "7,2,11", "limit": 2, "offset": 1}
    )
    assert arrow_table(named_page.content).equals(in_order.slice(1, 2).select(got.schema.names))
    paged = arrow_table(
        client.get(f"{URL}/embeddings", params=base | {"limit": 5, "offset": 4}).content
    )
    assert paged.equals(everything.slice(4, 5).select(paged.schema.names))
    npy = client.get(f"{URL}/embeddings", params=base | {"format": "npy"})
    assert npy.headers["content-type"] == "application/x-npy"
    assert int(npy.headers["content-length"]) == len(npy.content)  # sized, not chunked
    assert int(npy.headers["x-row-count"]) == everything.num_rows
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), embedding_matrix(everything))
    rows = client.get(f"{URL}/embeddings", params=base | {"format": "json", "limit": 3}).json()
    assert [r["sample_index"] for r in rows] == everything.column("sample_index").to_pylist()[:3]
    np.testing.assert_allclose(rows[0]["embedding"], embedding_matrix(everything)[0], rtol=1e-6)
    empty = client.get(f"{URL}/embeddings", params=base | {"split": "val"})
    assert empty.status_code == 200 and arrow_table(empty.content).num_rows == 0
    empty_npy = client.get(f"{URL}/embeddings", params=base | {"split": "val", "format": "npy"})
    assert np.load(io.BytesIO(empty_npy.content)).shape == (0, 4)


def test_json_answers_are_capped(client, monkeypatch):
    import services.api.reads

    monkeypatch.setattr(services.api.reads, "JSON_MAX_EMBEDDING_ROWS", 10)
    params = {"arch": "small_cnn", "layer": "fc2", "seed": 0, "format": "json"}
    answer = client.get(f"{URL}/embeddings", params=params)
    assert answer.status_code == 413
    assert detail(answer).startswith("72 rows match, and a JSON answer holds at most 10;")
    assert client.get(f"{URL}/embeddings", params=params | {"limit": 10}).status_code == 200


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"seed": "abc"}, "query parameter 'seed': input should be a valid integer"),
        ({"seed": "99999999999"}, "query parameter 'seed'"),
        ({"epoch": "1.5"}, "query parameter 'epoch'"),
        ({"split": "te'st"}, "query parameter 'split': string should match pattern"),
        ({"split": "a\x00b"}, "query parameter 'split'"),
        ({"sample_index": "1,,2"}, "query parameter 'sample_index'"),
        ({"sample_index": "-1"}, "query parameter 'sample_index'"),
        ({"sample_index": "99999999999999999999"}, "query parameter 'sample_index'"),
        ({"limit": "0"}, "query parameter 'limit'"),
        ({"offset": "-3"}, "query parameter 'offset'"),
        ({"format": "xml"}, "query parameter 'format'"),
    ],
)
def test_bad_filters_are_one_sentence_422s(client, params, needle):
    answer = client.get(f"{URL}/embeddings", params={"arch": "small_cnn", "layer": "fc2"} | params)
    assert answer.status_code == 422, answer.text
    assert needle in detail(answer) and detail(answer).endswith("accepted values")


def test_too_many_sample_indices_are_refused(client):
    many = ",".join(["1"] * 1_001)
    answer = client.get(
        f"{URL}/embeddings", params={"arch": "small_cnn", "layer": "fc2", "sample_index": many}
    )
    assert answer.status_code == 422 and "at most 1000" in detail(answer)


def test_metrics_in_each_format_equal_the_table(client, store):
    params = {"seed": 1, "layer": "fc2", "epoch": 2}
    rows = client.get(f"{URL}/metrics", params=params).json()
    direct = store.read(
        S.METRICS, filter=where(experiment_id="exp", seed=1, layer="fc2", epoch=2)
    ).drop_columns(["unit_key"])
    assert rows == direct.to_pylist()
    assert [r["value"] for r in rows] == [
        pytest.approx(H.metric_value(1, 2, "fc2", s)) for s in H.SCOPES
    ]
    csv = client.get(f"{URL}/metrics", params=params | {"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert pacsv.read_csv(io.BytesIO(csv.content)).equals(pacsv.read_csv(io.BytesIO(_csv(direct))))
    arrow = client.get(f"{URL}/metrics", params=params | {"format": "arrow"})
    assert arrow_table(arrow.content).equals(direct)
    nan = client.get(f"{URL}/metrics", params={"metric": "nmi"}).json()
    assert len(nan) == 1 and nan[0]["value"] is None
    assert client.get(f"{URL}/metrics", params={"metric": "nope"}).json() == []
    assert client.get("/v1/experiments/other/metrics").json() == []


def test_pairs_as_rows_and_as_matrices(client, store):
    rows = client.get(f"{URL}/pairs", params={"epoch": 1, "layer_a": "conv1"}).json()
    assert len(rows) == 2 * len(H.SCOPES)
    assert all(r["epoch"] == 1 and r["layer_a"] == "conv1" for r in rows)
    answer = client.get(f"{URL}/pairs", params={"shape": "matrix", "epoch": 2})
    assert answer.status_code == 200, answer.text
    matrix = answer.json()
    assert matrix["layers"] == ["conv1", "fc2"] and matrix["metric"] == "ari"
    assert [(m["seed_a"], m["seed_b"]) for m in matrix["matrices"]] == [(0, 1)]
    expected = [
        [np.mean([H.pair_value(2, a, b, s) for s in H.SCOPES]) for b in H.DIMS] for a in H.DIMS
    ]
    np.testing.assert_allclose(matrix["matrices"][0]["values"], expected)
    both = client.get(f"{URL}/pairs", params={"shape": "matrix"})
    assert both.status_code == 422
    assert (
        detail(both) == "the matching pairs hold 2 values of epoch: [1, 2]; choose one with epoch="
    )
    none = client.get(f"{URL}/pairs", params={"shape": "matrix", "epoch": 7})
    assert none.status_code == 404


def test_clusterings_hold_indices_and_labels(client, store):
    params = {"seed": 0, "dataset": "ds-a", "layer": "fc2", "epoch": 1}
    rows = client.get(f"{URL}/clusterings", params=params).json()
    assert [r["scope"] for r in rows] == list(H.SCOPES)
    assert rows[0]["sample_index"] == [0, 2, 4, 6, 8, 10]
    assert rows[0]["labels"] == [i % 3 // 2 for i in rows[0]["sample_index"]]
    arrow = arrow_table(
        client.get(f"{URL}/clusterings", params=params | {"format": "arrow"}).content
    )
    assert arrow.column("labels").to_pylist() == [r["labels"] for r in rows]
    answer = client.get(f"{URL}/clusterings", params={"format": "csv"})
    assert answer.status_code == 422


def test_thumbnails_are_the_stored_pngs_or_one_sentence_404s(client, store):
    answer = client.get("/v1/samples/ds-a/test/3/thumbnail")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content == H.png(30)
    none = client.get("/v1/samples/ds-a/train/3/thumbnail")
    assert none.status_code == 404
    assert detail(none) == (
        "sample 3 of 'ds-a' 'train' has no thumbnail: the dataset's options.thumbnails left "
        "them out for this split"
    )
    assert "it has ['test', 'train']" in detail(client.get("/v1/samples/ds-a/val/3/thumbnail"))
    assert "no sample_index 99" in detail(client.get("/v1/samples/ds-a/test/99/thumbnail"))
    assert "it holds ['ds-a', 'ds-b']" in detail(client.get("/v1/samples/zz/test/1/thumbnail"))
    assert client.get("/v1/samples/ds-a/test/-1/thumbnail").status_code == 422


def test_openapi_documents_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for path in (
        "/v1/experiments",
        "/v1/experiments/{name}/runs",
        "/v1/experiments/{name}/layers",
        "/v1/experiments/{name}/embeddings",
        "/v1/experiments/{name}/metrics",
        "/v1/experiments/{name}/pairs",
        "/v1/experiments/{name}/clusterings",
        "/v1/experiments/{name}/neighbors",
        "/v1/samples/{dataset_id}/{split}/{sample_index}/thumbnail",
        "/v1/tags",
        "/v1/compact",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    assert "delete" in schema["paths"]["/v1/experiments/{name}"]
    assert client.get("/docs").status_code == 200


def test_cors_is_off_unless_configured(client, store):
    origin = {"Origin": "http://example.org"}
    assert (
        "access-control-allow-origin" not in client.get("/v1/experiments", headers=origin).headers
    )
    allowed = TestClient(
        create_app(ServiceSettings(store=store.root, cors_origins=("http://example.org",)))
    )
    answer = allowed.get("/v1/experiments", headers=origin)
    assert answer.headers["access-control-allow-origin"] == "http://example.org"


def _csv(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pacsv.write_csv(table, out)
    return out.getvalue()


@pytest.mark.parametrize("count", [0, 3, 4, 9])
def test_answers_make_their_first_chunks_in_the_route_and_a_short_one_whole(count):
    made = []

    def chunks():
        for i in range(count):
            made.append(i)
            yield b"%d" % i

    body = _prefetched(chunks())
    assert made == list(range(min(count, PREFETCH_CHUNKS)))  # made before any is sent
    if count < PREFETCH_CHUNKS:  # the whole answer: one body
        assert body == b"".join(b"%d" % i for i in range(count))
        return

    async def sent():
        return [chunk async for chunk in body]

    assert asyncio.run(sent()) == [b"%d" % i for i in range(count)]


def test_the_rest_is_made_at_most_read_ahead_chunks_ahead_and_stops_with_the_client():
    made, closed = [], threading.Event()

    def chunks():
        try:
            for i in range(100):
                made.append(i)
                yield b"%d" % i
        finally:
            closed.set()

    async def first_ten() -> list[bytes]:
        got = []
        body = _made_ahead(chunks())
        async for chunk in body:
            got.append(chunk)
            await asyncio.sleep(0.01)  # a slow client: the thread runs ahead meanwhile
            assert len(made) <= len(got) + READ_AHEAD_CHUNKS + 1
            if len(got) == 10:
                break
        for _ in range(500):  # the thread runs ahead of a client that stops reading...
            if len(made) >= 10 + READ_AHEAD_CHUNKS:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # ...and no further
        assert 10 + READ_AHEAD_CHUNKS <= len(made) <= 10 + READ_AHEAD_CHUNKS + 1
        await body.aclose()  # the client went away
        return got

    assert asyncio.run(first_ten()) == [b"%d" % i for i in range(10)]
    assert closed.wait(5)  # the thread stopped at its next chunk and closed the source
    assert len(made) <= 10 + READ_AHEAD_CHUNKS + 1


def test_an_error_while_making_a_chunk_ends_the_answer_with_it():
    def chunks():
        yield b"0"
        raise OSError("a data file went missing")

    async def sent() -> list[bytes]:
        return [chunk async for chunk in _made_ahead(chunks())]

    with pytest.raises(OSError, match="a data file went missing"):
        asyncio.run(sent())
