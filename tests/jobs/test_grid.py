"""The spec's ``grid:``: cartesian product, arch keys, per-run training, errors."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from actors.models import probe_layers
from jobs.cli import app
from jobs.grid import grid_values
from jobs.pipeline import cluster_units, run_plans
from jobs.plan import plan_experiment
from jobs.spec import ExperimentSpec, SpecError, register_stored_archs

BASE = {
    "name": "grid",
    "datasets": [{"name": "digits", "hierarchy": "coarse"}],
    "archs": ["small_cnn"],
    "seeds": [0, 1],
    "training": {"epochs": 3, "lr": 0.05, "weight_decay": 0.0001},
    "clustering": {"methods": ["kmeans"]},
}


def _spec(grid, **extra) -> ExperimentSpec:
    return ExperimentSpec.from_dict({**BASE, "grid": grid, **extra})


def test_grid_is_the_cartesian_product_each_under_its_own_key():
    spec = _spec({"lr": [0.1, 0.03], "weight_decay": [0, 5e-4], "width": [8, 16]})
    keys = [a.stored_key for a in spec.arch_specs]
    assert len(keys) == len(set(keys)) == 8
    assert keys[0] == "small_cnn_lr0.1_wd0_w8"
    assert keys[-1] == "small_cnn_lr0.03_wd0.0005_w16"
    points = {tuple(sorted(spec.grid_point(k).items())) for k in keys}
    assert points == {
        (("lr", lr), ("weight_decay", wd), ("width", w))
        for lr in (0.1, 0.03)
        for wd in (0, 5e-4)
        for w in (8, 16)
    }
    for key in keys:
        point = spec.grid_point(key)
        training = spec.training_for(key)
        assert (training.lr, training.weight_decay) == (point["lr"], point["weight_decay"])
        assert training.epochs == 3  # not in the grid: the spec's training
        assert spec.arch(key).options == {"width": point["width"]}


def test_each_point_and_seed_is_a_run_with_its_own_training():
    spec = _spec({"lr": [0.1, 0.01], "augment": [False, True], "batch_size": [32]})
    plans = run_plans(spec)
    assert len(plans) == 4 * 2  # points x seeds
    assert len({p.run_id for p in plans}) == 8
    by_key = {p.arch: p for p in plans if p.seed == 0}
    plan = by_key["small_cnn_lr0.01_bs32_aug1"]
    assert (plan.training.lr, plan.training.batch_size, plan.training.augment) == (0.01, 32, True)
    assert not by_key["small_cnn_lr0.1_bs32_aug0"].training.augment
    # the other stages follow the expanded runs unchanged
    assert {u.arch for u in cluster_units(spec)} == set(by_key)


def test_grid_epochs_probe_each_run_after_its_own_last_epoch():
    spec = _spec({"epochs": [1, 2]})
    plans = {p.arch: p for p in run_plans(spec)}
    assert plans["small_cnn_ep1"].probe_epochs == (1,)
    assert plans["small_cnn_ep2"].probe_epochs == (2,)
    assert plans["small_cnn_ep2"].training.epochs == 2
    assert {(u.arch, u.epoch) for u in cluster_units(spec)} == {
        ("small_cnn_ep1", 1),
        ("small_cnn_ep2", 2),
    }


def test_a_spec_without_grid_is_unchanged():
    spec = ExperimentSpec.from_dict(BASE)
    assert [a.stored_key for a in spec.arch_specs] == ["small_cnn"]
    assert spec.training_for("small_cnn") == spec.training
    assert grid_values(spec.canonical_json()) == {}


def test_stored_spec_gives_back_each_runs_hyper_parameters_and_layers():
    spec = _spec({"lr": [0.1, 0.01], "width": [4, 8]})
    values = grid_values(spec.canonical_json())
    assert values == {a.stored_key: spec.grid_point(a.stored_key) for a in spec.arch_specs}
    assert values["small_cnn_lr0.01_w4"] == {"lr": 0.01, "width": 4}
    register_stored_archs(spec.canonical_json())
    assert probe_layers("small_cnn_lr0.01_w4") == spec.arch_specs[0].probe_layers()


def test_plan_counts_the_expanded_runs():
    spec = _spec({"lr": [0.1, 0.01], "width": [4, 8, 16]})
    plan = plan_experiment(spec)
    assert plan.units["train"] == 6 * 2
    layers = len(spec.arch_specs[0].probe_layers())
    assert plan.units["cluster"] == 6 * 2 * layers


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"momentum": [0.9]}, "grid: unknown hyper-parameter(s) ['momentum']; a grid varies"),
        ({"lr": []}, "grid: lr is an empty list; give it at least one value"),
        ({"lr": [0.1, 0.1]}, "grid: lr [0.1, 0.1] repeats a value"),
        ({}, "grid: grid varies no hyper-parameter"),
        ({"lr": [0]}, "grid.lr.0: Input should be greater than 0"),
    ],
)
def test_grid_errors_are_one_sentence(grid, message):
    with pytest.raises(SpecError) as err:
        _spec(grid)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_grid_epochs_and_probe_epochs_conflict():
    with pytest.raises(SpecError, match="grid.epochs probes each run after its own last epoch"):
        _spec({"epochs": [1, 2]}, probe_epochs=[1])


def test_width_on_a_model_without_it_is_refused():
    with pytest.raises(SpecError, match="width"):
        ExperimentSpec.from_dict({**BASE, "archs": ["resnet18"], "grid": {"width": [4]}})


def test_cli_refuses_a_bad_grid_with_exit_2_and_writes_nothing(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "grid": {"lr": [], "depth": [2]}}))
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", str(path), "--store", str(store)])
    assert result.exit_code == 2
    assert "unknown hyper-parameter(s) ['depth']" in result.output
    assert not store.exists()
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2


def test_canonical_json_records_the_grid():
    spec = _spec({"lr": [0.1, 0.01]})
    assert json.loads(spec.canonical_json())["grid"]["lr"] == [0.1, 0.01]
