"""Capacity plans: predicted rows and bytes against a real reduced run, and the memory check."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from jobs.plan import PlanError, parse_counts, plan_experiment, stored_bytes
from jobs.spec import ExperimentSpec
from tests.integration.conftest import small_spec

runner = CliRunner()
# Tables of a few rows are mostly file footer: there the error is bounded in bytes.
TOLERANCE = 0.10
SMALL_TABLE_SLACK_BYTES = 4096


def _digits_spec(name: str = "plan", **resources) -> ExperimentSpec:
    data = small_spec(name, epochs=1)
    data["datasets"] = data["datasets"][:1]
    if resources:
        data["resources"] = resources
    return ExperimentSpec.from_dict(data)


@pytest.mark.integration
def test_plan_matches_what_a_reduced_run_stored(tmp_path):
    from jobs.pipeline import run_experiment
    from storage import EmbeddingStore

    spec = _digits_spec()
    plan = plan_experiment(spec)
    store = EmbeddingStore(str(tmp_path))
    run_experiment(spec, store)
    assert sorted(t.table for t in plan.tables) == sorted(store.list_tables())
    for table in plan.tables:
        assert table.rows == store.dataset(table.table).count_rows(), table.table
        measured = stored_bytes(str(tmp_path), table.table)
        slack = max(TOLERANCE * measured, SMALL_TABLE_SLACK_BYTES)
        assert abs(table.bytes - measured) <= slack, (table.table, table.bytes, measured)


def test_units_per_stage_of_the_reduced_spec():
    plan = plan_experiment(_digits_spec())
    layers, seeds = 6, 2
    assert plan.units == {
        "samples": 2,
        "train": seeds,
        "extract": seeds * layers * 2,
        "cluster": seeds * layers * 2,
        "score": seeds * layers * 2 + seeds * layers + 2 * 2,
    }


def test_plan_refuses_a_ward_fit_past_the_worker_budget(tmp_path):
    spec = _digits_spec()
    with pytest.raises(PlanError, match="worker_memory_gb"):
        plan_experiment(spec, worker_memory_gb=1e-4).check_memory()
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(small_spec("tight")))
    result = runner.invoke(app, ["plan", str(path), "--worker-memory-gb", "0.0001"])
    assert result.exit_code == 2
    assert "raise resources.worker_memory_gb" in " ".join(result.output.split())


def test_run_refuses_before_writing_anything(tmp_path):
    from jobs.pipeline import run_experiment
    from storage import EmbeddingStore

    spec = _digits_spec("tight", worker_memory_gb=1e-4)
    with pytest.raises(PlanError):
        run_experiment(spec, EmbeddingStore(str(tmp_path / "store")))
    assert not (tmp_path / "store").exists()


def test_breeds_living17_planned_from_assumed_counts(tmp_path):
    path = tmp_path / "living17.yaml"
    spec = {
        "name": "living17",
        "datasets": [
            {
                "name": "imagenet",
                "hierarchy": "breeds-living17",
                "options": {"root": str(tmp_path / "absent")},
            }
        ],
        "archs": ["small_cnn"],
        "seeds": [0, 1],
    }
    path.write_text(json.dumps(spec))
    result = runner.invoke(
        app, ["plan", str(path), "--json", "--assume-counts", "train=88400,val=3400"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    tables = {t["table"]: t for t in plan["tables"]}
    assert tables["samples"]["rows"] == 88400 + 3400
    # 17 superclasses of 4 subclasses, 50 val images each: the largest Ward fit is 200
    ward = next(p for p in plan["clustering"] if p["method"] == "ward")
    assert (ward["n_samples"], ward["split_samples"]) == (200, 3400)
    assert ward["algorithm"] == "in-place condensed"


@pytest.mark.parametrize("text", ["train=10", "train=x,val=3", "train=0,val=3", "=5,val=3"])
def test_assume_counts_errors_name_the_item(text):
    with pytest.raises(PlanError, match="--assume-counts"):
        parse_counts(text)


def test_cka_and_mknn_in_the_spec_add_one_pairs_unit_per_probe_epoch():
    spec = _digits_spec()
    data = spec.model_dump(mode="json")
    data["metrics"]["consistency"] = ["ari", "cka", "mknn"]
    with_similarity = ExperimentSpec.from_dict(data)
    before, after = plan_experiment(spec), plan_experiment(with_similarity)
    layers, seed_pairs, epochs = 6, 1, 1
    assert after.units["score"] == before.units["score"] + epochs
    rows = {t.table: t.rows for t in before.tables}, {t.table: t.rows for t in after.tables}
    assert rows[1]["pairs"] - rows[0]["pairs"] == epochs * seed_pairs * layers**2 * 2
