"""The probing and CLP studies at their smallest size through the real pipeline (local Ray,
Lance on disk): the CLP stage against direct calls on the stored embeddings, the Table B.1
methods, and each Finding's numbers against the stored metrics. The full-size example specs
run under ``-m slow``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from threadpoolctl import threadpool_limits

from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from services.findings import STUDIES, finding
from services.findings.clp import TOLERANCE, msdr
from services.findings.probing import TABLE_B1
from services.metrics import class_distance_matrix, clp_scores
from storage import EmbeddingStore, embedding_matrix
from storage import schema as S
from storage.filters import where
from tests.integration.conftest import SMALL_SHAPES

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"
PENULTIMATE = "fc2"  # small_cnn's last probed layer


def reduced(study: str, *, epochs: int, seeds=(0, 1)) -> dict:
    """The study's example spec cut down: fewer seeds and epochs, smaller shapes."""
    data = yaml.safe_load((EXAMPLES / f"study_{study}.yaml").read_text())
    data["name"] = f"reduced-{study}"
    data["seeds"], data["training"]["epochs"] = list(seeds), epochs
    for dataset in data["datasets"]:
        if dataset["name"] == "shapes":
            dataset["options"] = SMALL_SHAPES
    return data


@pytest.fixture(scope="module")
def probing(tmp_path_factory, local_ray):
    spec = ExperimentSpec.from_dict(reduced("probing", epochs=1))
    store = EmbeddingStore(str(tmp_path_factory.mktemp("probing") / "store"))
    run_experiment(spec, store)
    return spec, store


@pytest.fixture(scope="module")
def clp(tmp_path_factory, local_ray):
    spec = ExperimentSpec.from_dict(reduced("clp", epochs=2))
    store = EmbeddingStore(str(tmp_path_factory.mktemp("clp") / "store"))
    run_experiment(spec, store)
    return spec, store


def metrics_frame(store, experiment_id, **conditions):
    return store.read(
        S.METRICS, filter=where(experiment_id=experiment_id, **conditions)
    ).to_pandas()


def per_seed_mean(rows) -> np.ndarray:
    """Mean over scopes (superclasses) per seed, in seed order."""
    return rows.groupby("seed").value.mean().sort_index().to_numpy()


def test_table_b1_methods_cluster_and_score_every_layer(probing):
    spec, store = probing
    clusterings = store.read(
        S.CLUSTERINGS, columns=["method", "layer", "n_clusters", "labels"]
    ).to_pandas()
    assert set(clusterings.method) == set(TABLE_B1)
    assert (clusterings.n_clusters == 4).all()  # 4 fill styles per superclass, factor 1
    assert all(len(set(labels)) == 4 for labels in clusterings.labels)
    scores = metrics_frame(store, spec.experiment_id, metric="purity", layer=PENULTIMATE)
    assert set(scores.method) == set(TABLE_B1)
    assert scores.value.between(0.25, 1).all()  # purity of 4 clusters of 4 subclasses >= 1/4


def test_probing_finding_is_the_stored_scores(probing):
    spec, store = probing
    found = finding(store, spec.experiment_id)
    assert found.study == "probing" and len(found.measured) == 2 + len(TABLE_B1)
    measured = {m.label: m for m in found.measured}
    runs = store.read(S.RUNS).to_pandas()
    kind_of = {d: h for d, h in zip(runs.dataset_id, runs.hierarchy, strict=True)}
    scores = metrics_frame(store, spec.experiment_id, layer=PENULTIMATE)
    scores["kind"] = scores.dataset_id.map(kind_of)
    means = {}
    for kind in ("natural", "shuffled"):
        rows = scores[(scores.kind == kind) & (scores.method == "ward") & (scores.metric == "ami")]
        m = measured[f"small_cnn fc2 ward AMI, {kind}"]
        assert m.n == 2 and m.mean == pytest.approx(per_seed_mean(rows).mean())
        assert m.sd == pytest.approx(per_seed_mean(rows).std(ddof=1))
        means[kind] = m.mean
    assert found.holds == (means["shuffled"] > means["natural"])
    purity = {}
    for method in TABLE_B1:
        rows = scores[
            (scores.kind == "natural") & (scores.method == method) & (scores.metric == "purity")
        ]
        purity[method] = measured[f"small_cnn fc2 {method} purity, natural (B.1)"].mean
        assert purity[method] == pytest.approx(per_seed_mean(rows).mean())
    single_lowest = min(purity, key=purity.get) == "single"
    verdict = "holds" if single_lowest else "does not hold"
    assert f"single linkage the lowest purity) {verdict} here" in found.rule


def _split(store, spec, run_id, layer, split):
    batches = store.embedding_batches(
        spec.experiment_id,
        "small_cnn",
        layer,
        columns=["superclass", "subclass", S.EMBEDDING],
        run_id=run_id,
        epoch=spec.training.epochs,
        split=split,
    )
    table = pa.Table.from_batches(list(batches))
    return (
        embedding_matrix(table),
        table.column("superclass").to_numpy(),
        table.column("subclass").to_numpy(),
    )


@pytest.mark.parametrize("layer", ["conv2", PENULTIMATE])
def test_clp_stage_is_clp_on_the_stored_embeddings(clp, layer):
    spec, store = clp
    for run_id in store.read(S.RUNS).to_pandas().run_id:
        train = _split(store, spec, run_id, layer, "train")
        test = _split(store, spec, run_id, layer, "test")
        with threadpool_limits(1):  # as in a Ray task with num_cpus=1
            expected = clp_scores(*train, *test, method="ward", random_state=0)
        rows = metrics_frame(store, spec.experiment_id, run_id=run_id, layer=layer)
        stored = dict(zip(rows.metric, rows.value, strict=False))
        # lbfgs may still end a hair apart under other BLAS summation orders and flip a
        # borderline test sample: allow two of the ~540 test digits
        samples = 2 / len(test[0])
        assert stored["clp_accuracy"] == pytest.approx(expected["clp_accuracy"], abs=samples)
        assert stored["linear_probe_fine"] == pytest.approx(
            expected["linear_probe_fine"], abs=samples
        )
        assert expected["linear_probe_fine"] > 0.5  # 10 digits; chance is 0.1

        classes, D = class_distance_matrix(train[0], train[2])
        distances = rows[rows.metric == "class_distance"]
        assert len(distances) == 100 and set(distances.split) == {"train"}
        stored_D = np.full((10, 10), np.nan)
        for scope, value in zip(distances.scope, distances.value, strict=True):
            i, j = (int(c) for c in scope.split(","))
            stored_D[i, j] = value
        np.testing.assert_array_equal(classes, np.arange(10))
        np.testing.assert_allclose(stored_D, D, rtol=1e-6, atol=1e-9)


def test_clp_finding_is_the_stored_scores(clp):
    spec, store = clp
    found = finding(store, spec.experiment_id)
    measured = {m.label: m for m in found.measured}
    runs = store.read(S.RUNS).to_pandas().drop_duplicates("dataset_id")
    within = []
    for r in runs.itertuples():
        rows = metrics_frame(store, spec.experiment_id, dataset_id=r.dataset_id, layer=PENULTIMATE)
        label = f"digits/{r.hierarchy} small_cnn fc2"
        values = {}
        for metric, name in (
            ("clp_accuracy", "CLP accuracy (fine labels)"),
            ("linear_probe_fine", "linear probe on fine labels"),
        ):
            values[metric] = per_seed_mean(rows[rows.metric == metric])
            assert measured[f"{label} {name}"].mean == pytest.approx(values[metric].mean())
            assert measured[f"{label} {name}"].n == 2
        within.append(
            values["clp_accuracy"].mean() >= values["linear_probe_fine"].mean() - TOLERANCE
        )
        samples = store.read(S.SAMPLES, filter=where(dataset_id=r.dataset_id)).to_pandas()
        superclass_of = dict(zip(samples.subclass, samples.superclass, strict=True))
        distances = rows[rows.metric == "class_distance"]
        ratios = [msdr(distances[distances.seed == seed], superclass_of) for seed in (0, 1)]
        assert measured[f"{label} MSDR (1: collapsed)"].mean == pytest.approx(np.mean(ratios))
        assert min(ratios) > 1  # trained features: a superclass's digits stay apart
    assert set(runs.hierarchy) == {"coarse", "random-coarse"}
    assert found.holds == all(within)


def test_study_specs_name_their_study_and_have_three_seeds():
    for study in ("probing", "clp"):
        spec = ExperimentSpec.from_yaml(EXAMPLES / f"study_{study}.yaml")
        assert spec.study == study and study in STUDIES
        assert len(spec.seeds) >= 3 and spec.resources.trainer_gpus == 0


@pytest.mark.slow
@pytest.mark.parametrize("study", ["probing", "clp"])
def test_full_study_runs_and_its_finding_reads_back(study, tmp_path, local_ray):
    spec = ExperimentSpec.from_yaml(EXAMPLES / f"study_{study}.yaml")
    store = EmbeddingStore(str(tmp_path / "store"))
    run_experiment(spec, store)
    found = finding(store, spec.experiment_id)
    assert found.study == study and all(m.n == 3 for m in found.measured)
