"""The intraclass study at its smallest size, through the real pipeline.

A reduced copy of examples/study_intraclass.yaml (a 2-point grid, 2 seeds, 1
epoch, three pre-activation layers): every run gets c1-c4 on its training split
in the metrics table, equal to the measures recomputed from the stored
embeddings; the Finding's Kendall coefficients equal the ones computed by hand
from the runs and metrics tables; a re-run commits nothing.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from services.findings import finding
from services.metrics.intraclass import (
    intraclass_c1,
    intraclass_c2,
    intraclass_c3,
    intraclass_c4,
)
from storage import EmbeddingStore, embedding_matrix, embeddings_table
from storage import schema as S
from storage.filters import where

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[2] / "examples" / "study_intraclass.yaml"
LAYERS = ["conv4.1", "fc1.0", "fc2.0"]
SEEDS = (0, 1)


def reduced_spec() -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = "intraclass-small"
    data["seeds"] = list(SEEDS)
    data["grid"] = {"lr": [0.1, 0.01], "width": [4]}
    data["training"]["epochs"] = 1
    data["archs"][0]["layers"] = LAYERS
    return data


@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray):
    spec = ExperimentSpec.from_dict(reduced_spec())
    store = EmbeddingStore(str(tmp_path_factory.mktemp("intraclass") / "store"))
    run_experiment(spec, store)
    return spec, store


def test_every_run_has_c1_to_c4_on_its_training_split(study):
    spec, store = study
    rows = store.read(
        S.METRICS, filter=where(experiment_id=spec.experiment_id, method="intraclass")
    ).to_pandas()
    assert len(rows) == 2 * len(SEEDS) * 4
    assert set(rows["split"]) == {"train"} and set(rows["epoch"]) == {1}
    assert set(rows["layer"]) == {"all"}
    assert set(rows["arch"]) == {"small_cnn_lr0.1_w4", "small_cnn_lr0.01_w4"}
    assert np.isfinite(rows["value"]).all()


def _stored_layers(store, spec, arch, seed):
    run = store.read(
        S.RUNS, columns=["run_id"], filter=where(experiment_id=spec.experiment_id, arch=arch)
    ).to_pandas()
    run_id = next(r for r in run["run_id"] if r.endswith(f"seed{seed}"))
    layers = []
    for layer in LAYERS:
        table = store.read(
            embeddings_table(spec.experiment_id, arch, layer),
            filter=where(run_id=run_id, split="train", epoch=1),
        )
        order = np.argsort(table.column("sample_index").to_numpy())
        layers.append(embedding_matrix(table)[order])
        subclass = table.column("subclass").to_numpy()[order]
        superclass = table.column("superclass").to_numpy()[order]
    return run_id, layers, subclass, superclass


def test_stored_measures_equal_a_recomputation_from_the_embeddings(study):
    spec, store = study
    for arch in ("small_cnn_lr0.1_w4", "small_cnn_lr0.01_w4"):
        run_id, layers, subclass, superclass = _stored_layers(store, spec, arch, seed=1)
        assert len(subclass) == 1258  # the whole digits training split
        stored = (
            store.read(S.METRICS, filter=where(run_id=run_id, method="intraclass"))
            .to_pandas()
            .set_index("metric")["value"]
        )
        expected = {
            "c1": intraclass_c1(layers, subclass, superclass),
            "c2": intraclass_c2([np.maximum(a, 0) for a in layers], subclass, superclass),
            "c3": intraclass_c3(layers, superclass),
            "c4": intraclass_c4(layers, superclass),
        }
        for metric, value in expected.items():
            assert stored[metric] == pytest.approx(value, rel=1e-6), metric


def test_finding_kendall_is_the_sign_agreement_of_the_two_points(study):
    spec, store = study
    runs = store.read(S.RUNS, filter=where(experiment_id=spec.experiment_id)).to_pandas()
    metrics = store.read(
        S.METRICS, filter=where(experiment_id=spec.experiment_id, method="intraclass")
    ).to_pandas()
    found = finding(store, spec.experiment_id)
    by_label = {m.label: m for m in found.measured}
    for measure in ("c1", "c2", "c3", "c4"):
        per_seed = []
        for seed in SEEDS:
            value = metrics[(metrics.metric == measure) & (metrics.seed == seed)]
            value = value.set_index("arch")["value"]
            acc = runs[runs.seed == seed].set_index("arch")["test_accuracy"]
            a, b = "small_cnn_lr0.1_w4", "small_cnn_lr0.01_w4"
            # one axis varies, one group of two models: tau = sign agreement
            per_seed.append(np.sign(value[a] - value[b]) * np.sign(acc[a] - acc[b]))
        m = by_label[f"granulated Kendall of {measure} vs test accuracy"]
        assert m.n == len(SEEDS)
        assert m.mean == pytest.approx(np.mean(per_seed))
    assert found.holds == all(
        by_label[f"granulated Kendall of {c} vs test accuracy"].mean > 0
        for c in ("c1", "c2", "c3", "c4")
    )


def test_a_rerun_commits_nothing(study):
    spec, store = study
    assert run_experiment(spec, store).committed == {}


def test_show_and_report_give_the_finding(study, tmp_path):
    spec, store = study
    runner = CliRunner()
    shown = runner.invoke(app, ["show", spec.experiment_id, "--store", str(store.root)])
    assert shown.exit_code == 0, shown.output
    assert "reproduction of Carbonnelle & De Vleeschouwer" in " ".join(shown.output.split())
    out = tmp_path / "report"
    made = runner.invoke(
        app, ["report", spec.experiment_id, "--store", str(store.root), "--out", str(out)]
    )
    assert made.exit_code == 0, made.output
    assert "Reproduction: Carbonnelle" in (out / "index.html").read_text()
