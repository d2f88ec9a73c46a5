"""The query service over a store on an object store (a real S3-compatible server, moto,
on loopback): embeddings by layer and by sample_index, and nearest neighbours through a
vector index built on the bucket, each checked against a direct read or a brute force."""

import datetime

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from services.api import ServiceSettings, create_app
from services.api.client import arrow_table
from storage import EmbeddingStore, embedding_matrix, embeddings_table
from storage import schema as S
from storage.index import build_index
from tests.storage.test_s3 import s3_endpoint  # noqa: F401 (the moto server fixture)

N, DIM, CLUSTERS = 1_200, 16, 12
RUN = "exp/d/net/seed0"
URL = "/v1/experiments/exp"


@pytest.fixture(scope="module")
def served(s3_endpoint):  # noqa: F811
    options = {
        "aws_endpoint": s3_endpoint,
        "allow_http": "true",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": "us-east-1",
    }
    store = EmbeddingStore("s3://stratalens/served", storage_options=options)
    experiment = {"experiment_id": "exp", "name": "exp", "spec": "{}"}
    experiment["created_at"] = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    store.write_unit(
        S.EXPERIMENTS,
        "exp",
        pa.Table.from_pylist([experiment], schema=S.EXPERIMENTS_SCHEMA.remove(0)),
    )
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, DIM))
    values = centres[rng.integers(0, CLUSTERS, N)] + 0.3 * rng.normal(size=(N, DIM))
    values = values.astype(np.float32)
    rows = S.embedding_rows(
        values,
        sample_index=np.arange(N),
        subclass=np.zeros(N),
        superclass=np.arange(N) % 2,
        experiment_id="exp",
        run_id=RUN,
        dataset_id="d",
        arch="net",
        seed=0,
        epoch=1,
        split="test",
    )
    store.write_unit(embeddings_table("exp", "net", "fc"), "u", rows, S.embeddings_schema(DIM))
    store.optimize(embeddings_table("exp", "net", "fc"))
    settings = ServiceSettings(store=store.root, storage_options=options)
    return TestClient(create_app(settings)), store, values


def test_embeddings_stream_from_the_bucket(served):
    client, store, values = served
    assert client.get("/readyz").json()["experiments"] == 1
    whole = client.get(f"{URL}/embeddings", params={"arch": "net", "layer": "fc"})
    assert whole.status_code == 200
    np.testing.assert_array_equal(embedding_matrix(arrow_table(whole.content)), values)
    picked = [1_150, 3, 640, 3, 77]
    named = client.get(
        f"{URL}/embeddings",
        params={"arch": "net", "layer": "fc", "sample_index": ",".join(map(str, picked))},
    )
    got = arrow_table(named.content)
    assert got.column("sample_index").to_pylist() == sorted(set(picked))
    np.testing.assert_array_equal(embedding_matrix(got), values[sorted(set(picked))])
    direct = store.embeddings("exp", "net", "fc", sample_index=sorted(set(picked)))
    assert got.equals(direct.select(got.column_names))


def test_neighbours_through_an_index_on_the_bucket(served):
    client, store, values = served
    query = {"arch": "net", "layer": "fc", "run": RUN, "k": 10}
    unit = values / np.linalg.norm(values, axis=1, keepdims=True)
    probes = [5, 321, 999]
    exact = [
        client.post(f"{URL}/neighbors", json=query | {"sample_index": i}).json() for i in probes
    ]
    for i, answer in zip(probes, exact, strict=True):
        assert answer["search"] == "exact"
        expected = np.argsort(1 - unit @ unit[i], kind="stable")[:10]
        assert [n["sample_index"] for n in answer["neighbors"]] == expected.tolist()
    built = build_index(store, "exp", "net", "fc", num_partitions=4)
    assert built.indexed_rows == N
    recall = []
    for i, answer in zip(probes, exact, strict=True):
        indexed = client.post(f"{URL}/neighbors", json=query | {"sample_index": i}).json()
        assert indexed["search"] == "index" and indexed["index"]["index_type"] == "IVF_HNSW_SQ"
        found = {n["sample_index"] for n in indexed["neighbors"]}
        recall.append(len(found & {n["sample_index"] for n in answer["neighbors"]}) / 10)
    assert np.mean(recall) >= 0.9
