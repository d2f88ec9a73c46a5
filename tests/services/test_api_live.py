"""The query service under a real uvicorn on 127.0.0.1, over a store written by a reduced
pipeline: every answer equals a direct Lance read of the same rows (plain ``lance``, not
stratalens' readers)."""

import io
import json

import httpx
import lance
import numpy as np
import pyarrow as pa
import pytest

from services.api import client
from tests.services.conftest import EXPERIMENT, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server, timeout=60) as client:
        yield client


def table(store, name: str) -> lance.LanceDataset:
    return lance.dataset(f"{store.root}/{name}")


def vectors(rows: pa.Table) -> np.ndarray:
    column = rows.column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


def test_catalog_equals_the_tables(http, pipeline_store):
    experiments = http.get("/v1/experiments").json()
    assert [e["name"] for e in experiments] == [EXPERIMENT]
    stored = table(pipeline_store, "experiments").to_table().to_pylist()[0]
    assert experiments[0]["spec"] == json.loads(stored["spec"])
    runs = table(pipeline_store, "runs").to_table(filter=f"experiment_id = '{EXPERIMENT}'")
    assert experiments[0]["runs"] == runs.num_rows == 2
    answer = http.get(f"/v1/experiments/{EXPERIMENT}/runs").json()
    by_id = {row["run_id"]: row for row in runs.to_pylist()}
    for row in answer:
        expected = by_id[row["run_id"]]
        assert row["test_accuracy"] == pytest.approx(expected["test_accuracy"])
        assert (row["seed"], row["dataset_id"]) == (expected["seed"], expected["dataset_id"])
    layers = http.get(f"/v1/experiments/{EXPERIMENT}/layers").json()
    assert [layer["layer"] for layer in layers] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "fc1",
        "fc2",
    ]
    for layer in layers:
        ds = table(pipeline_store, f"embeddings/{EXPERIMENT}/small_cnn/{layer['layer']}")
        assert layer["rows"] == ds.count_rows()
        assert layer["dim"] == ds.schema.field("embedding").type.list_size


@pytest.mark.parametrize("layer", ["conv1", "fc2"])
def test_embeddings_stream_the_rows_lance_reads(http, pipeline_store, layer):
    runs = http.get(f"/v1/experiments/{EXPERIMENT}/runs").json()
    run = runs[-1]["run_id"]
    params = {"arch": "small_cnn", "layer": layer, "run": run, "split": "test"}
    with http.stream("GET", f"/v1/experiments/{EXPERIMENT}/embeddings", params=params) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/vnd.apache.arrow.stream"
        body = answer.read()
    got = client.arrow_table(body)
    if len(got.to_batches()) > 1:  # streamed as made
        assert answer.headers.get("transfer-encoding") == "chunked"
    else:  # made whole before the first byte: sent with its length
        assert int(answer.headers["content-length"]) == len(body)
    ds = table(pipeline_store, f"embeddings/{EXPERIMENT}/small_cnn/{layer}")
    direct = ds.to_table(columns=got.schema.names, filter=f"run_id = '{run}' AND split = 'test'")
    assert got.equals(direct) and got.num_rows > 0
    npy = http.get(f"/v1/experiments/{EXPERIMENT}/embeddings", params=params | {"format": "npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), vectors(direct))
    picked = direct.column("sample_index").to_pylist()[5:25:3]
    some = http.get(
        f"/v1/experiments/{EXPERIMENT}/embeddings",
        params=params | {"sample_index": ",".join(map(str, picked))},
    )
    assert int(some.headers["content-length"]) == len(some.content)  # a short answer: whole
    got = pa.ipc.open_stream(some.content).read_all()
    assert sorted(got.column("sample_index").to_pylist()) == sorted(picked)


def test_the_python_client_reads_what_lance_reads(live_server, pipeline_store):
    ds = table(pipeline_store, f"embeddings/{EXPERIMENT}/small_cnn/fc1")
    direct = ds.to_table(filter="seed = 1 AND split = 'test'")
    got = client.embeddings(
        live_server, EXPERIMENT, arch="small_cnn", layer="fc1", seed=1, split="test"
    )
    assert got.equals(direct.select(got.schema.names)) and got.num_rows > 0
    batches = list(
        client.embedding_batches(
            live_server, EXPERIMENT, arch="small_cnn", layer="fc1", seed=1, split="test"
        )
    )
    assert len(batches) >= 1 and pa.Table.from_batches(batches).equals(got)
    picked = direct.column("sample_index").to_numpy()[:7]  # an array, as users hold them
    some = client.embeddings(
        live_server,
        EXPERIMENT,
        arch="small_cnn",
        layer="fc1",
        seed=1,
        split="test",
        sample_index=picked,
    )
    assert sorted(some.column("sample_index").to_pylist()) == sorted(picked.tolist())
    with pytest.raises(client.ServiceError, match="404: .*fc1") as error:
        client.embeddings(live_server, EXPERIMENT, arch="small_cnn", layer="fc9")
    assert error.value.status == 404
    with pytest.raises(ValueError, match="not an Arrow IPC stream; ask format=arrow"):
        client.fetch_table(f"{live_server}/v1/experiments/{EXPERIMENT}/metrics", {"limit": 1})
    with pytest.raises(ConnectionError, match="is `stratalens serve` running there"):
        client.embeddings(f"http://127.0.0.1:{free_port()}", EXPERIMENT, arch="a", layer="b")


def test_metrics_pairs_and_clusterings_equal_the_tables(http, pipeline_store):
    url = f"/v1/experiments/{EXPERIMENT}"
    metrics = http.get(f"{url}/metrics", params={"metric": "ami", "layer": "fc2"}).json()
    direct = table(pipeline_store, "metrics").to_table(
        filter=f"experiment_id = '{EXPERIMENT}' AND metric = 'ami' AND layer = 'fc2'"
    )
    assert metrics == direct.drop_columns(["unit_key"]).to_pylist() and metrics
    arrow = http.get(f"{url}/pairs", params={"format": "arrow", "layer_a": "conv2"})
    pairs = pa.ipc.open_stream(arrow.content).read_all()
    direct = table(pipeline_store, "pairs").to_table(
        filter=f"experiment_id = '{EXPERIMENT}' AND layer_a = 'conv2'"
    )
    assert pairs.equals(direct.drop_columns(["unit_key"])) and pairs.num_rows
    dataset = direct.column("dataset_id")[0].as_py()
    matrix = http.get(f"{url}/pairs", params={"shape": "matrix", "dataset": dataset}).json()
    rows = table(pipeline_store, "pairs").to_table(
        filter=f"dataset_id = '{dataset}' AND layer_a = 'conv2' AND layer_b = 'fc1'"
    )
    at = matrix["layers"].index
    assert matrix["matrices"][0]["values"][at("conv2")][at("fc1")] == pytest.approx(
        np.mean(rows.column("value").to_numpy())
    )
    clusterings = http.get(f"{url}/clusterings", params={"seed": 1, "layer": "fc1"}).json()
    direct = table(pipeline_store, "clusterings").to_table(filter="seed = 1 AND layer = 'fc1'")
    assert [c["labels"] for c in clusterings] == direct.column("labels").to_pylist()


def test_thumbnails_are_the_stored_pngs_or_404s(http, pipeline_store):
    samples = table(pipeline_store, "samples").to_table(
        columns=["dataset_id", "split", "sample_index", "thumbnail"]
    )
    with_png = [row for row in samples.to_pylist() if row["thumbnail"]]
    without = [row for row in samples.to_pylist() if not row["thumbnail"]]
    assert with_png
    for row in with_png[:3] + without[:3]:
        answer = http.get(
            f"/v1/samples/{row['dataset_id']}/{row['split']}/{row['sample_index']}/thumbnail"
        )
        if row["thumbnail"]:
            assert answer.status_code == 200 and answer.content == row["thumbnail"]
        else:
            assert answer.status_code == 404 and "has no thumbnail" in answer.json()["detail"]


def test_neighbours_equal_a_brute_force_search(http, pipeline_store):
    run = http.get(f"/v1/experiments/{EXPERIMENT}/runs").json()[0]["run_id"]
    query = {"arch": "small_cnn", "layer": "fc1", "run": run, "split": "test", "k": 8}
    answer = http.post(f"/v1/experiments/{EXPERIMENT}/neighbors", json=query | {"sample_index": 9})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    ds = table(pipeline_store, f"embeddings/{EXPERIMENT}/small_cnn/fc1")
    rows = ds.to_table(filter=f"run_id = '{run}' AND split = 'test'")
    values = vectors(rows).astype(np.float64)
    unit = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    query_vector = unit[rows.column("sample_index").to_pylist().index(9)]
    distance = 1 - unit @ query_vector
    expected = np.sort(distance)[:8]
    np.testing.assert_allclose([n["distance"] for n in found["neighbors"]], expected, atol=1e-5)
    assert found["search"] == "exact"


def test_the_server_answers_bad_requests_with_4xx(http):
    for path in (
        "/v1/experiments/nope/layers",
        f"/v1/experiments/{EXPERIMENT}/embeddings?arch=small_cnn&layer=..%2F..%2Fruns",
        f"/v1/experiments/{EXPERIMENT}/embeddings?arch=small_cnn&layer=fc2&seed=x",
        "/v1/experiments/..%2F..%2F/runs",
    ):
        answer = http.get(path)
        assert 400 <= answer.status_code < 500, (path, answer.text)
    assert http.post("/v1/tags", json={"name": "x"}).status_code == 403  # no token configured
