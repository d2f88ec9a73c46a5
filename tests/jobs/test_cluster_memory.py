"""Clustering tasks declare Ray's ``memory`` resource from the plan's peak of their fit."""

from dataclasses import replace

import ray

from jobs.pipeline import cluster_memory
from jobs.plan import plan_experiment
from jobs.spec import ExperimentSpec
from tests.integration.conftest import small_spec


def _spec(**resources) -> ExperimentSpec:
    data = small_spec("mem", epochs=1)
    data["datasets"] = data["datasets"][:1]
    data["resources"] = resources
    return ExperimentSpec.from_dict(data)


def test_each_method_declares_its_largest_fit(local_ray):
    spec = _spec(worker_memory_gb=64)
    plan = plan_experiment(spec)
    memory = cluster_memory(spec, plan)
    assert memory == {p.method: p.peak_bytes for p in plan.clustering}
    assert memory["ward"] != memory["kmeans"]  # from each method's own fit, not one figure


def test_without_a_declared_worker_size_no_request_exceeds_the_largest_node(local_ray):
    spec = _spec()
    plan = plan_experiment(spec)
    huge = [replace(p, peak_bytes=1 << 50) if p.method == "ward" else p for p in plan.clustering]
    largest = int(max(n["Resources"]["memory"] for n in ray.nodes() if n["Alive"]))
    memory = cluster_memory(spec, replace(plan, clustering=huge))
    assert memory["ward"] == largest  # a request no node could take would wait forever
    assert memory["kmeans"] == next(p.peak_bytes for p in plan.clustering if p.method == "kmeans")
