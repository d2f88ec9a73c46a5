"""The ssl study (examples/study_ssl.yaml) at its smallest size through the real pipeline.

VICReg without labels on digits, two seeds, probed before training and after two
epochs: every backbone layer (never the projector) is stored at both probe
epochs, NCC and CDNV are scored per layer for both label levels, the runs table
holds the penultimate layer's NCC superclass accuracy, and the Finding's numbers
are the stored metrics. The full-size study is the ``slow`` test.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

from actors.models import probe_layers
from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from services.findings import finding, finding_lines
from storage import EmbeddingStore, embeddings_table
from storage import schema as S
from storage.filters import where

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[2] / "examples" / "study_ssl.yaml"
LAYERS = list(probe_layers("small_cnn"))
SEEDS = (0, 1)
EPOCHS = (0, 2)


def reduced_spec() -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = "ssl-small"
    data["seeds"] = list(SEEDS)
    data["training"]["epochs"] = EPOCHS[-1]
    data["probe_epochs"] = list(EPOCHS)
    return data


@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray):
    spec = ExperimentSpec.from_dict(reduced_spec())
    store = EmbeddingStore(str(tmp_path_factory.mktemp("ssl") / "store"))
    run_experiment(spec, store)
    return store


def representation(store: EmbeddingStore):
    rows = store.read(S.METRICS, filter=where(method="representation")).to_pandas()
    return rows.set_index(["metric", "epoch", "layer", "seed"]).value.sort_index()


def test_every_backbone_layer_is_stored_at_every_probe_epoch(study):
    tables = set(study.list_tables())
    assert {embeddings_table("ssl-small", "small_cnn", layer) for layer in LAYERS} <= tables
    assert not any("projector" in t for t in tables)
    for layer in LAYERS:
        rows = study.embeddings("ssl-small", "small_cnn", layer, columns=["seed", "epoch"])
        seeds, epochs = rows.column("seed").to_pylist(), rows.column("epoch").to_pylist()
        found = set(zip(seeds, epochs, strict=True))
        assert found == {(s, e) for s in SEEDS for e in EPOCHS}


def test_ncc_and_cdnv_are_scored_per_layer_for_both_label_levels(study):
    values = representation(study)
    for metric in ("ncc_subclass", "ncc_superclass", "cdnv_subclass", "cdnv_superclass"):
        for epoch in EPOCHS:
            for layer in LAYERS:
                assert np.isfinite(values.loc[(metric, epoch, layer)].to_numpy()).all()
                assert len(values.loc[(metric, epoch, layer)]) == len(SEEDS)
    # training moved the representation: the penultimate features are not those at init
    before = values.loc[("cdnv_subclass", 0, "fc2")].to_numpy()
    after = values.loc[("cdnv_subclass", EPOCHS[-1], "fc2")].to_numpy()
    assert (np.abs(after - before) > 1e-3).all()


def test_runs_table_holds_the_penultimate_ncc_superclass_accuracy(study):
    runs = study.read(S.RUNS).to_pandas().set_index("seed")
    assert set(runs.loss) == {"vicreg"} and set(runs.epochs) == {EPOCHS[-1]}
    stored = representation(study).loc[("ncc_superclass", EPOCHS[-1], "fc2")]
    n_test = 539  # digits' held-out split
    for seed in SEEDS:
        # the same measure, from the trainer's features and from the stored rows
        assert abs(runs.test_accuracy[seed] - stored[seed]) <= 1 / n_test


def test_the_finding_reports_the_stored_metrics(study):
    found = finding(study, "ssl-small")
    assert found.study == "ssl" and "Ben-Shaul" in found.paper
    values = representation(study)
    by_label = {m.label: m for m in found.measured}
    holds = True
    for level in ("subclass", "superclass"):
        start = values.loc[(f"ncc_{level}", 0, "fc2")].to_numpy()
        end = values.loc[(f"ncc_{level}", EPOCHS[-1], "fc2")].to_numpy()
        shallow = values.loc[(f"ncc_{level}", EPOCHS[-1], "conv1")].to_numpy()
        for label, expected in (
            (f"NCC {level}, fc2, epoch 0", start),
            (f"NCC {level}, fc2, epoch {EPOCHS[-1]}", end),
            (f"NCC {level}, conv1, epoch {EPOCHS[-1]}", shallow),
        ):
            measured = by_label[label]
            assert measured.n == len(SEEDS)
            assert measured.mean == pytest.approx(expected.mean())
            assert measured.sd == pytest.approx(expected.std(ddof=1))
        cdnv = values.loc[(f"cdnv_{level}", EPOCHS[-1], "fc2")].to_numpy()
        assert by_label[f"CDNV {level}, fc2, epoch {EPOCHS[-1]}"].mean == pytest.approx(cdnv.mean())
        holds = holds and (end > start).all() and end.mean() > shallow.mean()
    assert found.holds == holds
    assert "vicreg" in found.rule
    assert any("the direction" in line for line in finding_lines(found))


@pytest.mark.slow
def test_the_full_study_holds(tmp_path, local_ray):
    spec = ExperimentSpec.from_yaml(EXAMPLE)
    store = EmbeddingStore(str(tmp_path / "store"))
    run_experiment(spec, store)
    found = finding(store, spec.experiment_id)
    assert found.holds, finding_lines(found)
