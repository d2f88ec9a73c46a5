"""Vector indices and nearest-neighbour search over a layer (storage/index.py), checked
against a brute-force NumPy search of the same rows."""

import numpy as np
import pytest

from storage import EmbeddingStore, StoreError, embeddings_table
from storage import schema as S
from storage.index import _matches_every_row, build_index, nearest, row_vector, vector_index
from storage.queries import NotFoundError

TABLE = embeddings_table("exp", "net", "fc")
N, DIM, CLUSTERS = 2_000, 16, 20


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM))
    return (centres[rng.integers(0, CLUSTERS, n)] + 0.3 * rng.normal(size=(n, DIM))).astype(
        np.float32
    )


def write(store: EmbeddingStore, values: np.ndarray, run: str, start: int = 0) -> None:
    rows = S.embedding_rows(
        values,
        sample_index=np.arange(start, start + len(values)),
        subclass=np.zeros(len(values)),
        superclass=np.zeros(len(values)),
        experiment_id="exp",
        run_id=run,
        dataset_id="d",
        arch="net",
        seed=0,
        epoch=1,
        split="test",
    )
    store.write_unit(TABLE, f"{run}/{start}", rows, S.embeddings_schema(DIM))


def brute_force(values: np.ndarray, query: np.ndarray, k: int, metric: str):
    if metric == "cosine":
        unit = values / np.linalg.norm(values, axis=1, keepdims=True)
        distance = 1 - unit @ (query / np.linalg.norm(query))
    else:
        distance = ((values - query) ** 2).sum(axis=1)  # Lance's l2 is the squared distance
    order = np.argsort(distance, kind="stable")[:k]
    return order, distance[order]


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    store = EmbeddingStore(str(tmp_path_factory.mktemp("index") / "store"))
    experiments = S.EXPERIMENTS_SCHEMA.remove(0).empty_table()
    store.write_unit(S.EXPERIMENTS, "exp", _experiment_row(experiments))
    values = {"r0": clustered(N, 0), "r1": clustered(N // 2, 1)}
    write(store, values["r0"], "r0")
    write(store, values["r1"], "r1")
    return store, values


def _experiment_row(empty):
    import datetime

    import pyarrow as pa

    row = {"experiment_id": "exp", "name": "exp", "spec": "{}"}
    row["created_at"] = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return pa.Table.from_pylist([row], schema=empty.schema)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_equals_brute_force_within_the_filter(layer, metric):
    store, values = layer
    query = values["r0"][17] + 0.01
    found = nearest(store, "exp", "net", "fc", query, 10, metric=metric, run_id="r0")
    assert found.search == "exact" and "no vector index" in found.reason
    order, distance = brute_force(values["r0"], query, 10, metric)
    assert found.rows.column("sample_index").to_pylist() == order.tolist()
    np.testing.assert_allclose(
        found.rows.column("distance").to_numpy(), distance, rtol=1e-4, atol=1e-5
    )
    assert set(found.rows.column("run_id").to_pylist()) == {"r0"}


def test_a_filter_every_row_matches_drops_the_prefilter_and_not_the_rows(layer, tmp_path):
    store, values = layer
    assert not _matches_every_row(store.layer_dataset("exp", "net", "fc"), "run_id = 'r0'")
    alone = EmbeddingStore(str(tmp_path / "store"))
    alone.write_unit(
        S.EXPERIMENTS, "exp", _experiment_row(S.EXPERIMENTS_SCHEMA.remove(0).empty_table())
    )
    write(alone, values["r1"], "r1")
    ds = alone.layer_dataset("exp", "net", "fc")
    assert _matches_every_row(ds, "run_id = 'r1' AND epoch = 1")
    query = values["r1"][3] + 0.01
    found = nearest(alone, "exp", "net", "fc", query, 10, exact=True, run_id="r1", epoch=1)
    order, _ = brute_force(values["r1"], query, 10, "cosine")
    assert found.rows.column("sample_index").to_pylist() == order.tolist()
    none = nearest(alone, "exp", "net", "fc", query, 10, exact=True, run_id="r1", epoch=2)
    assert none.rows.num_rows == 0  # a filter no row matches still filters


def test_an_index_answers_its_metric_with_high_recall(layer):
    store, values = layer
    assert vector_index(store, "exp", "net", "fc") is None
    built = build_index(store, "exp", "net", "fc", num_partitions=4)
    assert (built.index_type, built.metric) == ("IVF_HNSW_SQ", "cosine")
    assert built.indexed_rows == N + N // 2 and built.unindexed_rows == 0
    rng = np.random.default_rng(5)
    recalls = []
    for i in rng.choice(N, 20, replace=False):
        query = values["r0"][i]
        found = nearest(store, "exp", "net", "fc", query, 10, run_id="r0")
        assert found.search == "index" and found.index == built
        truth, _ = brute_force(values["r0"], query, 10, "cosine")
        got = found.rows.column("sample_index").to_pylist()
        recalls.append(len(set(got) & set(truth.tolist())) / 10)
        assert set(found.rows.column("run_id").to_pylist()) == {"r0"}
        # re-ranked on the stored vectors: exact distances, nearest first
        distance = found.rows.column("distance").to_numpy()
        exact = 1 - (values["r0"][got] @ query) / (
            np.linalg.norm(values["r0"][got], axis=1) * np.linalg.norm(query)
        )
        np.testing.assert_allclose(distance, exact, rtol=1e-4, atol=1e-5)
        assert (np.diff(distance) >= 0).all()
    assert np.mean(recalls) >= 0.9
    l2 = nearest(store, "exp", "net", "fc", values["r0"][0], 5, metric="l2", run_id="r0")
    assert l2.search == "exact" and l2.reason == "the layer's index answers cosine, not l2"
    asked = nearest(store, "exp", "net", "fc", values["r0"][0], 5, exact=True, run_id="r0")
    assert asked.search == "exact" and asked.reason == "an exact scan was asked for"


def test_an_l2_index_answers_squared_l2_distances(layer):
    store, values = layer
    build_index(store, "exp", "net", "fc", metric="l2", num_partitions=4)
    query = values["r0"][7] + 0.01
    found = nearest(store, "exp", "net", "fc", query, 5, metric="l2", run_id="r0")
    assert found.search == "index"
    order, distance = brute_force(values["r0"], query, 5, "l2")
    assert found.rows.column("sample_index").to_pylist()[0] == order[0]
    got = found.rows.column("sample_index").to_numpy()
    exact = ((values["r0"][got] - query) ** 2).sum(axis=1)
    np.testing.assert_allclose(found.rows.column("distance").to_numpy(), exact, rtol=1e-4)
    build_index(store, "exp", "net", "fc", num_partitions=4)  # back to cosine for the others


def test_rows_added_after_the_index_are_still_found(layer, tmp_path):
    store, values = layer
    if vector_index(store, "exp", "net", "fc") is None:
        build_index(store, "exp", "net", "fc", num_partitions=4)
    newcomer = values["r0"][3:4] * 1.0001
    write(store, newcomer, "r0", start=10_000)
    index = vector_index(store, "exp", "net", "fc")
    assert index.unindexed_rows == 1
    found = nearest(store, "exp", "net", "fc", values["r0"][3], 2, run_id="r0")
    assert found.search == "index"
    assert set(found.rows.column("sample_index").to_pylist()) == {3, 10_000}


def test_row_vector_names_one_sample(layer):
    store, values = layer
    np.testing.assert_array_equal(
        row_vector(store, "exp", "net", "fc", run_id="r1", sample_index=5), values["r1"][5]
    )
    with pytest.raises(StoreError, match="0 rows of layer 'fc' match"):
        row_vector(store, "exp", "net", "fc", run_id="r1", sample_index=99_999)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"k": 0}, "k=0 is out of range"),
        ({"k": 5000}, "k=5000 is out of range"),
        ({"vector": np.ones(3)}, "the query vector has 3 values, layer 'fc' has dimension 16"),
        ({"vector": np.full(DIM, np.nan)}, "must be finite"),
        ({"vector": np.zeros(DIM)}, "not all zeros for cosine"),
        ({"metric": "dot"}, "distance 'dot' is not one of"),
    ],
)
def test_bad_queries_are_one_sentence(layer, change, message):
    store, _ = layer
    query = {"vector": np.ones(DIM), "k": 3, "metric": "cosine"} | change
    with pytest.raises(StoreError, match=message):
        nearest(store, "exp", "net", "fc", query["vector"], query["k"], metric=query["metric"])


def test_bad_index_requests(layer):
    store, _ = layer
    with pytest.raises(NotFoundError, match=r"stored layers are \['fc'\]"):
        build_index(store, "exp", "net", "fc9")
    with pytest.raises(NotFoundError, match="experiment 'nope' is not in the store"):
        build_index(store, "nope", "net", "fc")
    with pytest.raises(StoreError, match="index type 'FLAT' is not one of"):
        build_index(store, "exp", "net", "fc", index_type="FLAT")
    with pytest.raises(StoreError, match="num_partitions=99999 does not fit"):
        build_index(store, "exp", "net", "fc", num_partitions=99_999)


def test_ivf_pq_is_built_on_request(tmp_path):
    store = EmbeddingStore(str(tmp_path / "store"))
    store.write_unit(
        S.EXPERIMENTS, "exp", _experiment_row(S.EXPERIMENTS_SCHEMA.remove(0).empty_table())
    )
    values = clustered(600, 2)
    write(store, values, "r0")
    built = build_index(
        store, "exp", "net", "fc", index_type="IVF_PQ", metric="l2", num_partitions=2
    )
    assert (built.index_type, built.metric) == ("IVF_PQ", "l2")
    found = nearest(store, "exp", "net", "fc", values[7], 5, metric="l2", run_id="r0")
    assert found.search == "index" and found.rows.column("sample_index")[0].as_py() == 7


def test_stratalens_index_builds_or_names_what_is_stored(tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    store = EmbeddingStore(str(tmp_path / "store"))
    store.write_unit(
        S.EXPERIMENTS, "exp", _experiment_row(S.EXPERIMENTS_SCHEMA.remove(0).empty_table())
    )
    write(store, clustered(500, 3), "r0")
    command = ["index", "exp", "--arch", "net", "--store", store.root, "--partitions", "2"]
    built = CliRunner().invoke(app, [*command, "--layer", "fc"])
    assert built.exit_code == 0, built.output
    assert "built IVF_HNSW_SQ (cosine) on exp/net/fc: 500 rows" in built.output
    assert vector_index(store, "exp", "net", "fc").metric == "cosine"
    missing = CliRunner().invoke(app, [*command, "--layer", "fc9"])
    assert missing.exit_code == 2 and "stored layers are ['fc']" in missing.output
    wrong = CliRunner().invoke(app, [*command, "--layer", "fc", "--metric", "dot"])
    assert wrong.exit_code == 2 and "distance 'dot' is not one of" in wrong.output
