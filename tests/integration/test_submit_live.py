"""`stratalens submit` and `jobs` against a real two-node Ray cluster with token auth.

The head (``ray start --head``, ``RAY_AUTH_MODE=token``) and a second ``ray start`` node
with its own resource run on this machine; the store is the S3-compatible server (moto)
on loopback. The job ships this checkout's packages as ``py_modules`` in its runtime env
(Ray uploads them to the cluster and puts them on every worker's path), as a user
submitting from a source checkout would; an installed cluster image needs none.
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from storage import EmbeddingStore
from storage import schema as S
from tests.integration.ray_cluster import LocalCluster
from tests.storage.test_s3 import s3_endpoint  # noqa: F401 - the moto server fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # about 2 min: two Ray nodes, two runs
ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-c", "from jobs.cli import app; app()"]
PACKAGES = ("actors", "jobs", "services", "storage")
TINY = {
    "name": "submitted",
    "datasets": [{"name": "digits", "hierarchy": "coarse"}],
    "archs": ["small_cnn"],
    "seeds": [0],
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.1},
    "clustering": {"methods": ["ward", "kmeans"], "overclustering_factors": [1, 2]},
}


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster(head_cpus=1)
    try:
        cluster.add_node(cpus=1, resources=json.dumps({"stratalens_node": 1}))
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.pids(), "processes of the test cluster outlived it"


def stratalens(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def client_env(tmp_path: Path, **extra: str) -> dict:
    """The submitting user's environment: a HOME of its own, no Ray token unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    home = tmp_path / "client-home"
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home), "PYTHONPATH": str(ROOT), **extra}


def s3_env(endpoint: str) -> dict:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


def table_rows(store: EmbeddingStore) -> dict[str, int]:
    return {table: store.dataset(table).count_rows() for table in store.list_tables()}


def unit_keys(store: EmbeddingStore) -> dict[str, list[str]]:
    """Every table's unit keys, sorted, with repeats (a unit stored twice shows twice)."""
    return {
        table: sorted(store.read(table, columns=["unit_key"]).column("unit_key").to_pylist())
        for table in store.list_tables()
    }


def test_anonymous_requests_are_refused_in_one_sentence(cluster, tmp_path):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.address}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    result = stratalens("jobs", "ls", "--address", cluster.address, env=client_env(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"the Ray head at {cluster.address} requires a token; set RAY_AUTH_TOKEN" in message
    assert "Traceback" not in result.stderr
    wrong = client_env(tmp_path, RAY_AUTH_TOKEN="not-" + cluster.token)
    result = stratalens("jobs", "ls", "--address", cluster.address, env=wrong)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"the Ray head at {cluster.address} refused the token found here" in message
    assert cluster.token not in result.stdout + result.stderr


def test_submitted_study_stores_what_a_local_run_stores(cluster, s3_endpoint, tmp_path):  # noqa: F811
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(TINY))
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"py_modules": [str(ROOT / p) for p in PACKAGES]}))
    env = client_env(tmp_path, RAY_AUTH_TOKEN_PATH=str(cluster.token_path), **s3_env(s3_endpoint))
    uri = "s3://stratalens/submitted"

    submitted = stratalens(
        "submit", str(spec_path), "--address", cluster.address, "--store", uri,
        "--runtime-env", str(runtime_env), "--wait", env=env,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    assert cluster.token not in output
    job_id = submitted.stdout.split()[0]
    assert job_id.startswith("raysubmit_")
    assert "committed" in output  # the job's own log, followed to its end

    local = EmbeddingStore(str(tmp_path / "local"))
    ran = stratalens("run", str(spec_path), "--store", local.root, env=client_env(tmp_path))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    options = {k.lower(): v for k, v in s3_env(s3_endpoint).items()}
    options["aws_endpoint"] = options.pop("aws_endpoint_url")
    remote = EmbeddingStore(uri, storage_options=options)
    assert table_rows(remote) == table_rows(local)
    assert unit_keys(remote) == unit_keys(local)
    samples = ["dataset_id", "split", "sample_index", "subclass", "superclass", "thumbnail"]
    assert remote.read(S.SAMPLES, columns=samples).sort_by(
        [("split", "ascending"), ("sample_index", "ascending")]
    ) == local.read(S.SAMPLES, columns=samples).sort_by(
        [("split", "ascending"), ("sample_index", "ascending")]
    )

    listed = stratalens("jobs", "ls", "--address", cluster.address, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = stratalens("jobs", "status", job_id, "--address", cluster.address, env=env)
    assert status.stdout.strip() == "SUCCEEDED"
    logs = stratalens("jobs", "logs", job_id, "--address", cluster.address, env=env)
    assert "committed" in logs.stdout
    for result in (listed, status, logs):
        assert cluster.token not in result.stdout + result.stderr


def test_a_local_store_on_a_multi_node_cluster_is_refused(cluster, tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(TINY))
    store = EmbeddingStore(str(tmp_path / "store"))
    env = client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.token_path))
    gcs = f"127.0.0.1:{cluster.gcs_port}"
    result = stratalens("run", str(spec_path), "--store", store.root, "--address", gcs, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"store {store.root!r} is a local path but this Ray cluster has 2 nodes" in message
    assert "pass --store s3://bucket/prefix" in message
    assert store.list_tables() == []
