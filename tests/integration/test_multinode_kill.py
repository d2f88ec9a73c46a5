"""Lose a whole worker node while a submitted study runs: every unit still ends stored once.

The test starts a token-auth head and a second node (``ray start``), submits a reduced
study (store on the S3-compatible server on loopback), waits for a trainer to run on the
second node, then SIGKILLs that node's raylet and everything under it, as a lost machine.
The job must still succeed (Ray restarts the trainer and re-runs the node's tasks on the
head), or a re-submission of the same spec must complete what is missing; either way the
store ends with exactly the units of a local run of the same spec.
"""

import json
import time

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from storage import EmbeddingStore
from tests.integration.ray_cluster import LocalCluster, alive, descendants, processes_titled
from tests.integration.test_submit_live import (
    PACKAGES,
    ROOT,
    client_env,
    s3_env,
    stratalens,
    table_rows,
    unit_keys,
)
from tests.integration.test_worker_death import SPEC
from tests.storage.test_s3 import s3_endpoint  # noqa: F401 - the moto server fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # several minutes on 2 cores


def wait_for_trainer_on(raylet: int, jobs, job_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if [p for p in processes_titled("ray::TrainerWorker") if p in descendants({raylet})]:
            return
        status = jobs.get_job_status(job_id)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            pytest.fail(
                f"the job ended {status} before a trainer ran on the worker node:\n"
                f"{jobs.get_job_logs(job_id)}"
            )
        time.sleep(0.2)
    pytest.fail("no trainer was placed on the worker node in time")


def test_a_lost_node_costs_its_units_not_the_study(s3_endpoint, tmp_path):  # noqa: F811
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"py_modules": [str(ROOT / p) for p in PACKAGES]}))
    uri = "s3://stratalens/lost-node"
    cluster = LocalCluster(head_cpus=1)
    try:
        node = cluster.add_node(cpus=1, resources=json.dumps({"stratalens_node": 1}))
        env = client_env(
            tmp_path, RAY_AUTH_TOKEN_PATH=str(cluster.token_path), **s3_env(s3_endpoint)
        )
        submit = ("submit", str(spec_path), "--address", cluster.address, "--store", uri)
        first = stratalens(*submit, "--runtime-env", str(runtime_env), env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        job_id = first.stdout.split()[0]
        jobs = JobSubmissionClient(
            cluster.address, headers={"Authorization": f"Bearer {cluster.token}"}
        )
        wait_for_trainer_on(node, jobs, job_id)
        cluster.kill_node(node)
        assert not alive(node)
        waited = stratalens("jobs", "status", job_id, "--address", cluster.address, env=env)
        while waited.stdout.strip() in {"PENDING", "RUNNING"}:
            time.sleep(2)
            waited = stratalens("jobs", "status", job_id, "--address", cluster.address, env=env)
        outcome = waited.stdout.strip()
        if outcome != "SUCCEEDED":  # the resubmission completes what is missing
            again = stratalens(*submit, "--runtime-env", str(runtime_env), "--wait", env=env)
            assert again.returncode == 0, again.stdout + again.stderr
    finally:
        cluster.stop()
    print(f"the job whose node was killed ended {outcome}")

    local = EmbeddingStore(str(tmp_path / "local"))
    ran = stratalens("run", str(spec_path), "--store", local.root, env=client_env(tmp_path))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    options = {k.lower(): v for k, v in s3_env(s3_endpoint).items()}
    options["aws_endpoint"] = options.pop("aws_endpoint_url")
    remote = EmbeddingStore(uri, storage_options=options)
    assert unit_keys(remote) == unit_keys(local)  # every unit, once
    assert table_rows(remote) == table_rows(local)
