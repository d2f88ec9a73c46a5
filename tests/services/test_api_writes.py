"""Nearest-neighbour queries and bearer-token writes of the query service (test client,
hand-written store)."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.api import ServiceSettings, create_app
from storage import schema as S
from storage.index import build_index
from tests.services import api_store as H

URL = f"/v1/experiments/{H.EXPERIMENT}"
TOKEN = "correct-horse-battery-staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return H.build(str(tmp_path_factory.mktemp("api-writes") / "store"))


@pytest.fixture(scope="module")
def client(store):
    return TestClient(create_app(ServiceSettings(store=store.root, token=TOKEN)))


def detail(response) -> str:
    return response.json()["detail"]


def cosine_order(values: np.ndarray, query: np.ndarray) -> list[int]:
    unit = values / np.linalg.norm(values, axis=1, keepdims=True)
    return np.argsort(1 - unit @ (query / np.linalg.norm(query)), kind="stable").tolist()


def test_neighbours_of_a_stored_sample_by_exact_scan(client):
    query = {"arch": "small_cnn", "layer": "fc2", "run": H.run_id("ds-a", 1), "split": "test"}
    answer = client.post(f"{URL}/neighbors", json=query | {"sample_index": 4, "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["search"], body["index"], body["epoch"]) == ("exact", None, 2)  # last epoch
    values = H.vectors("ds-a", 1, 2, "test", "fc2")
    assert [n["sample_index"] for n in body["neighbors"]] == cosine_order(values, values[4])[:5]
    assert body["neighbors"][0]["distance"] == pytest.approx(0, abs=1e-6)
    assert {n["run_id"] for n in body["neighbors"]} == {H.run_id("ds-a", 1)}


def test_neighbours_of_a_vector_named_by_seed_and_dataset(client):
    vector = [0.5, -1, 2, 0, 1, 1, -0.25, 3]
    query = {"arch": "small_cnn", "layer": "fc2", "seed": 0, "dataset": "ds-b", "epoch": 1}
    body = client.post(f"{URL}/neighbors", json=query | {"split": "train", "vector": vector}).json()
    values = H.vectors("ds-b", 0, 1, "train", "fc2")
    assert [n["sample_index"] for n in body["neighbors"]] == cosine_order(
        values, np.asarray(vector, np.float32)
    )[:10][: len(values)]
    assert body["run_id"] == H.run_id("ds-b", 0)


@pytest.mark.parametrize(
    "change, status, needle",
    [
        ({"seed": 0, "run": None}, 422, "2 runs of 'small_cnn' match seed = 0"),
        ({"run": "exp/ds-z/small_cnn/seed0"}, 404, "its runs are ['exp/ds-a/small_cnn/seed0'"),
        ({"split": None}, 422, "the run stores splits ['test', 'train'] in this layer"),
        ({"epoch": 7}, 404, "epoch 7 is not stored for run"),
        ({"layer": "fc9"}, 404, "stored layers are ['conv1', 'fc2']"),
        ({"vector": [1.0] * 8}, 422, "give exactly one of sample_index and vector"),
        ({"sample_index": None}, 422, "give exactly one of sample_index and vector"),
        ({"sample_index": None, "vector": [1.0, 2.0]}, 422, "has dimension 8"),
        ({"sample_index": 999}, 422, "0 rows of layer 'fc2' match"),
        ({"k": 0}, 422, "body field 'k'"),
        ({"metric": "dot"}, 422, "body field 'metric'"),
        ({"colour": "red"}, 422, "body field 'colour': extra inputs are not permitted"),
        ({"run": "it's"}, 422, "body field 'run'"),
    ],
)
def test_bad_neighbour_queries(client, change, status, needle):
    query = {
        "arch": "small_cnn",
        "layer": "fc2",
        "run": H.run_id("ds-a", 0),
        "split": "test",
        "sample_index": 1,
    }
    query = {key: value for key, value in (query | change).items() if value is not None}
    answer = client.post(f"{URL}/neighbors", json=query)
    assert answer.status_code == status, answer.text
    assert needle in detail(answer)


def test_neighbours_go_through_the_index_once_built(client, store):
    build_index(store, H.EXPERIMENT, "small_cnn", "conv1", num_partitions=2)
    query = {"arch": "small_cnn", "layer": "conv1", "run": H.run_id("ds-a", 0), "split": "test"}
    body = client.post(f"{URL}/neighbors", json=query | {"sample_index": 2, "k": 3}).json()
    assert body["search"] == "index" and body["index"]["index_type"] == "IVF_HNSW_SQ"
    assert body["neighbors"][0]["sample_index"] == 2
    l2 = client.post(f"{URL}/neighbors", json=query | {"sample_index": 2, "metric": "l2"}).json()
    assert l2["search"] == "exact" and "answers cosine, not l2" in l2["reason"]


def test_bodies_over_the_limit_are_413s(client):
    huge = {"arch": "small_cnn", "layer": "fc2", "run": "x", "vector": [0.5] * 300_000}
    answer = client.post(f"{URL}/neighbors", json=huge)
    assert answer.status_code == 413 and "over 1048576 bytes" in detail(answer)

    def chunks():
        for _ in range(300):
            yield b"0" * 4096

    answer = client.post(f"{URL}/neighbors", content=chunks())  # chunked, no Content-Length
    assert answer.status_code == 413
    assert client.post(f"{URL}/neighbors", content=b"{not json").status_code == 422


def test_writes_are_off_without_a_configured_token(store):
    reader = TestClient(create_app(ServiceSettings(store=store.root)))
    for method, path, body in (
        ("post", "/v1/tags", {"name": "x"}),
        ("post", "/v1/compact", {}),
        ("delete", "/v1/experiments/other", None),
    ):
        answer = reader.request(method, path, json=body, headers=AUTH)
        assert answer.status_code == 403, answer.text
        assert detail(answer).startswith("writes are off: this server was started without")
    assert reader.get("/v1/experiments/other/runs").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_writes_need_the_right_bearer_token(client, headers):
    answer = client.post("/v1/tags", json={"name": "nope"}, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <token>" in detail(answer)


def test_tag_compact_and_delete_with_the_token(client, store):
    answer = client.post("/v1/tags", json={"name": "snap-1"}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["tables"]) == set(store.list_tables())
    assert set(store.tags()["snap-1"]) == set(store.list_tables())
    digits = client.post("/v1/tags", json={"name": "12"}, headers=AUTH)
    assert digits.status_code == 422 and "not only digits" in detail(digits)
    rows = store.read(S.METRICS).num_rows
    compacted = client.post("/v1/compact", json={"keep_versions": 2}, headers=AUTH)
    assert compacted.status_code == 200 and compacted.json()["keep_versions"] == 2
    assert store.read(S.METRICS).num_rows == rows
    assert client.post("/v1/compact", json={"keep_versions": 0}, headers=AUTH).status_code == 422
    gone = client.delete("/v1/experiments/other", headers=AUTH)
    assert gone.status_code == 200 and gone.json() == {"deleted": "other"}
    assert [e["name"] for e in client.get("/v1/experiments").json()] == [H.EXPERIMENT]
    again = client.delete("/v1/experiments/other", headers=AUTH)
    assert again.status_code == 404 and "it holds ['exp']" in detail(again)
