"""One real store made by a reduced pipeline, and one uvicorn serving it on 127.0.0.1,
shared by the query-service tests that need them (one of each per test session)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "svc"
SERVER_START_S = 60  # uvicorn imports torch, matplotlib and Lance before it answers
# Where tests keep what a person should look at afterwards (the dashboard's screenshots).
ARTIFACTS = Path(os.environ.get("STRATALENS_TEST_ARTIFACTS", REPO / "test-artifacts"))


def service_spec() -> dict:
    """The integration tests' reduced quickstart, cut to the shapes dataset, one probe epoch
    and Ward at k = subclasses: two seeds, every small_cnn layer, thumbnails."""
    from tests.integration.conftest import small_spec

    spec = small_spec(EXPERIMENT, seeds=(0, 1), epochs=1)
    spec["datasets"] = [d for d in spec["datasets"] if d["name"] == "shapes"]
    spec["clustering"] = {"methods": ["ward"], "overclustering_factors": [1]}
    return spec


@pytest.fixture(scope="session")
def pipeline_store(tmp_path_factory):
    """A store written by ``run_experiment`` (local Ray, shut down after)."""
    import ray

    from jobs.pipeline import run_experiment
    from jobs.spec import ExperimentSpec
    from storage import EmbeddingStore

    store = EmbeddingStore(str(tmp_path_factory.mktemp("service") / "store"))
    try:
        run_experiment(ExperimentSpec.model_validate(service_spec()), store)
    finally:
        ray.shutdown()
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(
    url: str, process: subprocess.Popen | None, seconds: float, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it does not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = log.read_text() if log is not None else ""
            pytest.fail(f"the server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="session")
def live_server(pipeline_store, tmp_path_factory):
    """``http://127.0.0.1:PORT`` of ``stratalens serve`` (uvicorn) serving ``pipeline_store``;
    stopped by its process id at the end of the session. Its output goes to ``server.log``."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env.pop("STRATALENS_TOKEN", None)
    with log.open("w") as out:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs.cli",
                "serve",
                "--store",
                pipeline_store.root,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/readyz", process, SERVER_START_S, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
