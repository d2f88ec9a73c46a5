"""The same app as a Ray Serve deployment (two replicas on a local Ray bound to 127.0.0.1)
answers the same requests with the same bytes as uvicorn."""

import importlib

import httpx
import pytest
import yaml

from tests.services.conftest import EXPERIMENT, REPO, free_port, wait_until_up

pytestmark = pytest.mark.integration

SERVE_START_S = 180
URL = f"/v1/experiments/{EXPERIMENT}"


@pytest.fixture(scope="module")
def ray_serve(pipeline_store):
    """``http://127.0.0.1:PORT`` of Serve's proxy; Serve and the local Ray it started are
    shut down after the module."""
    import ray
    from ray import serve

    from services.api.ray_serve import run
    from services.api.settings import ServiceSettings

    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _node_ip_address="127.0.0.1",
    )
    try:
        run(
            ServiceSettings(store=pipeline_store.root),
            host="127.0.0.1",
            port=port,
            replicas=2,
            replica_cpus=0.5,
            blocking=False,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/readyz", None, SERVE_START_S)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def requests(http: httpx.Client) -> list[tuple[str, str, dict]]:
    """(method, path, options) of one request to every endpoint, and some bad ones."""
    run = http.get(f"{URL}/runs").json()[1]["run_id"]
    dataset = run.split("/")[1]
    layer = {"arch": "small_cnn", "layer": "fc1"}
    return [
        ("GET", "/healthz", {}),
        ("GET", "/v1/experiments", {}),
        ("GET", f"{URL}/runs", {}),
        ("GET", f"{URL}/layers", {}),
        ("GET", f"{URL}/embeddings", {"params": layer | {"run": run}}),
        ("GET", f"{URL}/embeddings", {"params": layer | {"seed": 1, "format": "npy"}}),
        (
            "GET",
            f"{URL}/embeddings",
            {"params": layer | {"sample_index": "3,5,8", "format": "json"}},
        ),
        ("GET", f"{URL}/metrics", {"params": {"metric": "ami", "format": "csv"}}),
        ("GET", f"{URL}/pairs", {"params": {"shape": "matrix"}}),
        ("GET", f"{URL}/pairs", {"params": {"format": "arrow", "layer_a": "fc2"}}),
        ("GET", f"{URL}/clusterings", {"params": {"layer": "conv3", "seed": 0}}),
        ("GET", f"/v1/samples/{dataset}/test/4/thumbnail", {}),
        (
            "POST",
            f"{URL}/neighbors",
            {"json": layer | {"run": run, "split": "test", "sample_index": 4, "k": 5}},
        ),
        ("GET", "/v1/experiments/nope/runs", {}),
        ("GET", f"{URL}/embeddings", {"params": layer | {"seed": "x"}}),
        ("POST", "/v1/tags", {"json": {"name": "t"}}),
    ]


def test_ray_serve_answers_as_uvicorn_does(live_server, ray_serve):
    with (
        httpx.Client(base_url=live_server, timeout=60) as uvicorn,
        httpx.Client(base_url=ray_serve, timeout=60) as serve,
    ):
        for method, path, options in requests(uvicorn):
            expected = uvicorn.request(method, path, **options)
            got = serve.request(method, path, **options)
            where = f"{method} {path} {options}"
            assert got.status_code == expected.status_code, where
            assert got.headers["content-type"] == expected.headers["content-type"], where
            assert got.content == expected.content, where
        statuses = [uvicorn.request(m, p, **o).status_code for m, p, o in requests(uvicorn)]
        assert statuses.count(200) == 13 and sorted(statuses[-3:]) == [403, 404, 422]


def test_the_rayservice_manifest_names_this_application(monkeypatch):
    """k8s/rayservice.query.yaml imports services.server:app and sizes QueryService."""
    from services.api.ray_serve import DEPLOYMENT_NAME

    manifest = yaml.safe_load((REPO / "k8s" / "rayservice.query.yaml").read_text())
    (application,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert [d["name"] for d in application["deployments"]] == [DEPLOYMENT_NAME]
    store = application["runtime_env"]["env_vars"]["STRATALENS_STORE"]
    monkeypatch.setenv("STRATALENS_STORE", store)
    monkeypatch.setenv("STRATALENS_TOKEN", "never-in-the-config")
    app = getattr(importlib.reload(importlib.import_module(module)), attribute)
    bound = app._bound_deployment  # Ray keeps the deployment of an Application here
    assert bound.name == DEPLOYMENT_NAME
    assert bound.init_args == (store, ())  # the token stays in each replica's environment
