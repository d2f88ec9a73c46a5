"""The store on an object store: a real S3-compatible server (moto) on loopback."""

import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from storage import EmbeddingStore, StoreError, embedding_matrix, embeddings_table
from storage import schema as S
from tests.factories import embedding_unit as rows

pytest.importorskip("moto", reason="moto[server] (a dev extra) provides the S3 server")
TABLE = embeddings_table("exp", "net", "fc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    # This environment's own moto: an older `moto_server` first on PATH (5.2.1 on the
    # development VM) fails the multipart uploads pyarrow uses for checkpoint files.
    command = [sys.executable, "-m", "moto.server"]
    process = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("the S3 test server did not start")
            time.sleep(0.2)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/stratalens", method="PUT"))
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3_store(s3_endpoint, request):
    options = {
        "aws_endpoint": s3_endpoint,
        "allow_http": "true",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": "us-east-1",
    }
    return EmbeddingStore(f"s3://stratalens/{request.node.name}", storage_options=options)


def test_units_commit_once_and_read_back(s3_store):
    table, values = rows(20)
    assert s3_store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    assert not s3_store.write_unit(TABLE, "u1", table)
    np.testing.assert_array_equal(embedding_matrix(s3_store.embeddings("exp", "net", "fc")), values)
    np.testing.assert_array_equal(s3_store.embedding_array("exp", "net", "fc"), values)
    assert s3_store.list_tables() == [TABLE]
    assert s3_store.committed_keys(TABLE) == {"u1"}


def test_layers_export_from_the_object_store(s3_store, tmp_path):
    import pyarrow.parquet as pq

    from storage.export import export_layer

    table, values = rows(20)
    s3_store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    assert export_layer(s3_store, "exp", "net", "fc", tmp_path / "x.npy") == (20, 4)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), values)
    export_layer(s3_store, "exp", "net", "fc", tmp_path / "x.parquet", split="test")
    assert pq.read_table(tmp_path / "x.parquet").num_rows == 20


def test_bad_input_leaves_the_object_store_unchanged(s3_store):
    s3_store.write_unit(TABLE, "u1", rows(5)[0], S.embeddings_schema(4))
    version = s3_store.version(TABLE)
    with pytest.raises(StoreError, match="dimension 3"):
        s3_store.write_unit(TABLE, "u2", rows(5, dim=3)[0])
    assert s3_store.version(TABLE) == version


def test_committers_racing_to_create_a_table_keep_every_unit_on_the_object_store(s3_store):
    """Trials go on until a second creation has landed (every trial here did); one that
    lands after other commits did not happen in 20 trials on this server, so the next
    test forces it."""
    from tests.storage.test_faults import race_until

    options = s3_store.storage_options
    race_until(
        lambda trial: EmbeddingStore(f"{s3_store.root}/{trial}", storage_options=options),
        lambda late, _: late,
    )


def test_a_late_creation_puts_the_units_it_hid_back_on_the_object_store(s3_store, monkeypatch):
    from tests.storage.test_faults import late_creation_keeps_every_unit

    other = EmbeddingStore(s3_store.root, storage_options=s3_store.storage_options)
    late_creation_keeps_every_unit(s3_store, other, monkeypatch)


def test_creating_a_table_that_exists_keeps_its_rows_on_the_object_store(s3_store):
    """What a committer that saw no table does when another committed first."""
    s3_store.write_unit(TABLE, "u1", rows(5)[0], S.embeddings_schema(4))
    version = s3_store.version(TABLE)
    ds = s3_store._create_table(TABLE, s3_store.dataset(TABLE).schema)
    assert ds.version == version and ds.count_rows() == 5


def test_tags_delete_and_compact_on_the_object_store(s3_store):
    s3_store.write_unit(TABLE, "u1", rows(5)[0], S.embeddings_schema(4))
    s3_store.tag_all("first")
    s3_store.write_unit(TABLE, "u2", rows(5, start=5)[0])
    s3_store.compact()
    assert s3_store.read(TABLE).num_rows == 10
    assert s3_store.embeddings("exp", "net", "fc", version="first").num_rows == 5
    assert set(s3_store.tags()) == {"first"}
    s3_store.delete_experiment("exp")
    assert s3_store.list_tables() == []


@pytest.mark.integration
def test_pipeline_runs_against_the_object_store(s3_store, local_ray):
    from jobs.pipeline import run_experiment
    from jobs.spec import ExperimentSpec

    spec = ExperimentSpec.from_dict(
        {
            "name": "s3",
            "datasets": [{"name": "digits", "hierarchy": "coarse"}],
            "archs": ["small_cnn"],
            "seeds": [0, 1],
            "training": {"epochs": 1},
            "clustering": {"methods": ["ward"]},
        }
    )
    counts = run_experiment(spec, s3_store)
    assert counts.committed["cluster"] == 2 * 6
    assert s3_store.read(S.RUNS).num_rows == 2
    assert run_experiment(spec, s3_store).committed == {}


def test_missing_bucket_is_one_clear_error(s3_endpoint, monkeypatch):
    from typer.testing import CliRunner

    from jobs.cli import app

    options = {"aws_endpoint": s3_endpoint, "aws_access_key_id": "t", "aws_secret_access_key": "t"}
    missing = EmbeddingStore("s3://no-such-bucket/x", storage_options=options)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' .* does not exist"):
        missing.check_reachable()
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["ls", "--store", "s3://no-such-bucket/x"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
