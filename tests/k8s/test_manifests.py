"""k8s/ manifests: CRD schemas (strict), core kinds, KubeRay's operator rules, the entrypoint."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import MANIFESTS, manifests

KUBERNETES_VERSION = "1.30"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
IMAGE_ROOT = "/home/ray/stratalens/"  # WORKDIR of k8s/Dockerfile
DOCS = manifests()
IDS = [f"{name}:{doc['kind']}" for name, doc in DOCS]


def _ray_version() -> str:
    import ray

    return ray.__version__


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=IDS)
def test_manifest_validates(name, doc, crd_validators):
    if doc["kind"] in RAY_KINDS:
        validator = crd_validators[doc["kind"]]
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
        assert not errors, errors
    else:
        import kubernetes_validate

        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field(crd_validators):
    doc = next(d for _, d in DOCS if d["kind"] == "RayCluster")
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["workerGroupSpec"] = bad["spec"].pop("workerGroupSpecs")
    assert list(crd_validators["RayCluster"].iter_errors(bad))


def _cluster_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    return {
        "RayCluster": [spec],
        "RayJob": [spec.get("rayClusterSpec")],
        "RayService": [spec.get("rayClusterConfig")],
    }[doc["kind"]]


@pytest.mark.parametrize(("name", "doc"), [d for d in DOCS if d[1]["kind"] in RAY_KINDS])
def test_operator_rules(name, doc):
    """What KubeRay's validation.go enforces and the schema cannot."""
    kind, spec, meta = doc["kind"], doc["spec"], doc["metadata"]
    assert DNS_1035.match(meta["name"]) and len(meta["name"]) <= MAX_NAME[kind], meta["name"]
    if kind == "RayJob":
        assert spec.get("rayClusterSpec") or spec.get("clusterSelector")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 or spec.get("suspend"):
            assert spec.get("shutdownAfterJobFinishes") is True
        assert spec.get("activeDeadlineSeconds", 1) > 0
        yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))
    if kind == "RayService":
        assert yaml.safe_load(spec["serveConfigV2"])["applications"]
    for cluster in _cluster_specs(doc):
        assert cluster["rayVersion"] == _ray_version(), "rayVersion must match the image's Ray"
        autoscaling = cluster.get("enableInTreeAutoscaling", False)
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        for group in cluster.get("workerGroupSpecs", []):
            if not autoscaling:
                assert "minReplicas" in group and "maxReplicas" in group, group["groupName"]
            assert group.get("minReplicas", 0) <= group.get("maxReplicas", 2**31 - 1)
        for group in groups:
            if "resources" in group:
                assert not set(group["rayStartParams"]) & set(RESOURCE_PARAMS)


def test_head_has_no_gpu_and_clusters_have_gpu_and_cpu_groups():
    cluster = next(d for _, d in DOCS if d["kind"] == "RayCluster")["spec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    gpus = {
        g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
            "nvidia.com/gpu"
        )
        for g in cluster["workerGroupSpecs"]
    }
    assert gpus == {"gpu": "1", "cpu": None}


def test_rayjob_entrypoint_is_a_cli_command_with_a_valid_spec():
    from typer.main import get_command

    from jobs.cli import app
    from jobs.plan import assumed_counts
    from jobs.spec import ExperimentSpec

    job = next(d for _, d in DOCS if d["kind"] == "RayJob")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    program, command, spec_path, *rest = shlex.split(job["entrypoint"])
    assert program == "stratalens"
    assert command in get_command(app).commands
    assert spec_path.startswith(IMAGE_ROOT)
    local = MANIFESTS.parent / spec_path.removeprefix(IMAGE_ROOT)
    assert local.is_file(), f"{spec_path} is not in the image (k8s/Dockerfile copies examples/)"
    with assumed_counts({"train": 88400, "val": 3400}):  # ImageNet is on the cluster's volume
        spec = ExperimentSpec.from_yaml(local)
    root = spec.datasets[0].options["root"]
    mounts = [
        m["mountPath"]
        for c in job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    ]
    assert root in mounts
    assert rest[:1] == ["--store"] and rest[1].startswith("s3://")


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    files = sorted(p.name for p in Path(MANIFESTS).glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files


def test_dockerfile_uses_the_ray_version_we_depend_on():
    text = (MANIFESTS / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={_ray_version()}" in text
    assert "AS cpu" in text and "AS cuda" in text
