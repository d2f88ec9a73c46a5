"""Session-wide validators for the manifests in k8s/ (loading the CRDs takes about a second)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CRDS = Path(__file__).parent / "crds"
MANIFESTS = Path(__file__).resolve().parents[2] / "k8s"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def _walk(node, fn):
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, list):
        for value in node:
            _walk(value, fn)
    return node


def _strict(node: dict) -> None:
    """Reject unknown fields, as ``kubectl apply --validate=strict`` does."""
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False


def _defaulted(node: dict) -> None:
    """The API server applies defaults before it checks ``required``."""
    if "required" in node:
        props = node.get("properties", {})
        node["required"] = [r for r in node["required"] if "default" not in props.get(r, {})]


@pytest.fixture(scope="session")
def crd_validators() -> dict:
    """{kind: strict Draft 7 validator of the CRD's v1 schema}."""
    import jsonschema

    validators = {}
    for kind, name in CRD_FILES.items():
        with open(CRDS / name) as f:
            crd = yaml.load(f, Loader=yaml.CSafeLoader)
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _walk(copy.deepcopy(version["schema"]["openAPIV3Schema"]), _defaulted)
        validators[kind] = jsonschema.Draft7Validator(_walk(schema, _strict))
    return validators


def manifests() -> list[tuple[str, dict]]:
    """(file name, document) of every object in k8s/*.yaml but the kustomization."""
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs
