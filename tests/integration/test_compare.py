"""`stratalens compare` through the real pipeline: two experiments over the same data."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from actors.models import probe_layers
from jobs.cli import app
from jobs.compare import CompareError, Side, _sample_orders, run_compare
from jobs.pipeline import run_experiment
from jobs.plan import plan_compare, stored_bytes
from jobs.spec import ExperimentSpec
from services.metrics import linear_cka, mutual_knn_alignment
from services.plots import compare_figures
from services.report import EMBEDDING as EMBED
from services.report import SEED_PAIRS, compare_pairs, consistency_matrix, write_report
from storage import EmbeddingStore, embedding_matrix
from storage import schema as S
from storage.filters import where
from tests.integration.conftest import SMALL_SHAPES

LAYERS = probe_layers("small_cnn")
SIMILARITY = ("ari", "cka", "cka_debiased", "mknn")  # cmpa's consistency metrics
OTHER_SHAPES = {"train_per_subclass": 10, "test_per_subclass": 5}  # another dataset_id
SHAPES = {"name": "shapes", "hierarchy": "natural", "options": SMALL_SHAPES}


def tiny(name, seeds, dataset=SHAPES, probe_epochs=None, epochs=1, consistency=("ari",)):
    return ExperimentSpec.from_dict(
        {
            "name": name,
            "datasets": [dataset],
            "archs": ["small_cnn"],
            "seeds": list(seeds),
            "probe_epochs": probe_epochs,
            "training": {"epochs": epochs, "batch_size": 64, "lr": 0.1},
            "clustering": {"methods": ["ward"], "overclustering_factors": [1]},
            "metrics": {"consistency": list(consistency)},
        }
    )


@pytest.fixture(scope="module")
def two(tmp_path_factory, local_ray):
    """cmpa: seeds 0 and 1, probed after epochs 1 and 2, cross-seed ARI, CKA and mknn in its
    score stage; cmpb: seed 0 at epoch 1; cmpc: seed 0 on a smaller cut of shapes (another
    dataset)."""
    store = EmbeddingStore(str(tmp_path_factory.mktemp("compare") / "store"))
    run_experiment(tiny("cmpa", (0, 1), SHAPES, [1, 2], 2, SIMILARITY), store)
    run_experiment(tiny("cmpb", (0,)), store)
    run_experiment(tiny("cmpc", (0,), dataset={**SHAPES, "options": OTHER_SHAPES}), store)
    return store


def side_rows(store, run_id, epoch, layer):
    rows = store.embeddings(
        "cmpa" if "cmpa" in run_id else "cmpb",
        "small_cnn",
        layer,
        columns=["sample_index", S.EMBEDDING],
        run_id=run_id,
        epoch=int(epoch),
        split="test",
    )
    return embedding_matrix(rows)[np.argsort(rows.column("sample_index").to_numpy())]


pytestmark = pytest.mark.integration


def test_compare_across_experiments_seeds_and_epochs(two):
    store = two
    seed_rows = store.read(S.PAIRS).num_rows
    committed, skipped = run_compare(store, ["cmpa", "cmpb"], metrics=("ari", "cka", "mknn"))
    # sides: cmpa seeds 0, 1 at epochs 1, 2 and cmpb seed 0 at epoch 2: 10 pairs x 3 metrics
    assert (committed, skipped) == (30, 0)
    pairs = store.read(S.PAIRS, filter="unit_key LIKE 'compare/%'").to_pandas()
    n_scopes = pairs[pairs.metric == "ari"].scope.nunique()  # one per superclass
    per_unit = pairs.groupby("unit_key").size()
    assert len(per_unit) == 30
    assert per_unit[per_unit.index.str.contains("/ari/")].eq(n_scopes * len(LAYERS) ** 2).all()
    assert per_unit[~per_unit.index.str.contains("/ari/")].eq(len(LAYERS) ** 2).all()
    embedding = pairs[pairs.metric != "ari"]
    assert embedding.value.between(-1e-9, 1 + 1e-9).all() and (pairs.value <= 1 + 1e-9).all()
    across = pairs[(pairs.experiment_id == "cmpa") & (pairs.experiment_b == "cmpb")]
    assert across.unit_key.nunique() == 4 * 3  # every cmpa side with cmpb's one side
    epochs = pairs[(pairs.run_a == pairs.run_b) & (pairs.epoch != pairs.epoch_b)]
    assert epochs.unit_key.nunique() == 2 * 3  # epoch 1 vs 2 of each cmpa seed
    # independent recomputation: CKA from the stored embeddings, ARI with scikit-learn
    row = across[(across.metric == "cka") & (across.epoch == 1)].iloc[7]
    X = side_rows(store, row.run_a, row.epoch, row.layer_a)
    Y = side_rows(store, row.run_b, row.epoch_b, row.layer_b)
    assert row.value == pytest.approx(linear_cka(X, Y), rel=1e-9, abs=1e-12)
    ari = across[across.metric == "ari"].iloc[11]
    labels = []
    for run, epoch, layer in (
        (ari.run_a, ari.epoch, ari.layer_a),
        (ari.run_b, ari.epoch_b, ari.layer_b),
    ):
        rows = store.read(
            S.CLUSTERINGS,
            filter=where(run_id=run, epoch=int(epoch), layer=layer, scope=ari.scope),
        ).to_pylist()[0]
        labels.append(np.asarray(rows["labels"])[np.argsort(rows["sample_index"])])
    assert ari.value == pytest.approx(skm.adjusted_rand_score(*labels), abs=1e-12)
    # the pipeline's own rows now carry side B too, and are not mixed with compare rows
    seeds = store.read(S.PAIRS, filter="experiment_id = 'cmpa'" + SEED_PAIRS).to_pandas()
    assert len(seeds) == seed_rows and (seeds.experiment_b == "cmpa").all()
    assert run_compare(store, ["cmpa", "cmpb"], metrics=("ari", "cka", "mknn")) == (0, 30)


def test_interrupted_compare_resumes_without_duplicates(two, monkeypatch):
    store = EmbeddingStore(two.root)
    real_commit, calls = store.commit, []

    def commit_then_die(unit):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(unit.unit_key)
        return real_commit(unit)

    monkeypatch.setattr(store, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_compare(store, ["cmpa"], epochs=[2], metrics=("ami", "cka_debiased"))
    monkeypatch.undo()
    assert run_compare(two, ["cmpa"], epochs=[2], metrics=("ami", "cka_debiased")) == (1, 1)
    rows = two.read(
        S.PAIRS, filter="metric IN ('ami', 'cka_debiased') AND unit_key LIKE 'compare/%'"
    ).to_pandas()
    assert rows.unit_key.nunique() == 2  # one pair of sides (the seeds at epoch 2), two metrics
    assert not rows.duplicated(["unit_key", "layer_a", "layer_b", "scope"]).any()


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown experiment(s) ['nope']"),
        (["cmpa", "--archs", "vit"], "arch(s) ['vit']"),
        (["cmpa", "--epochs", "7"], "epoch(s) [7]"),
        (["cmpa", "cmpc"], "shares no dataset and split"),
        (["cmpb"], "form no pair"),
        (["cmpa", "--metrics", "cca"], "unknown compare metric(s) ['cca']"),
        (["nope", "--plan"], "unknown experiment(s) ['nope']"),
        (["cmpa", "cmpc", "--plan"], "shares no dataset and split"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(two, args, message):
    before = two.version(S.PAIRS)
    result = CliRunner().invoke(app, ["compare", *args, "--store", two.root])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert two.version(S.PAIRS) == before


def test_compare_command_reports_units(two):
    result = CliRunner().invoke(
        app, ["compare", "cmpa", "--epochs", "1", "--metrics", "nmi", "--store", two.root]
    )
    assert result.exit_code == 0, result.output
    assert "committed 1 compare units (0 already there)" in result.output


def test_sides_over_different_samples_are_refused(store):
    def write(run_id, index):
        values = np.random.default_rng(0).normal(size=(len(index), 3))
        rows = S.embedding_rows(
            values,
            sample_index=index,
            subclass=index * 0,
            superclass=index * 0,
            experiment_id="e",
            run_id=run_id,
            dataset_id="d",
            arch="small_cnn",
            seed=0,
            epoch=1,
            split="test",
        )
        store.write_unit(
            S.embeddings_table("e", "small_cnn", "fc2"), run_id, rows, S.embeddings_schema(3)
        )

    write("r0", np.arange(5))
    write("r1", np.arange(1, 6))
    write("r2", np.array([0, 1, 1, 3, 4]))
    sides = [Side("e", "small_cnn", "d", 0, 1, run, "test") for run in ("r0", "r1", "r2")]
    with pytest.raises(CompareError, match="not the same sample_index set"):
        _sample_orders(store, sides[:2], {side: ["fc2"] for side in sides[:2]})
    with pytest.raises(CompareError, match="holds a sample_index more than once"):
        _sample_orders(store, sides[::2], {side: ["fc2"] for side in sides[::2]})


def test_score_stage_computes_cka_and_mknn_between_seeds_and_resumes(two):
    stage = "experiment_id = 'cmpa' AND method = 'embedding'" + SEED_PAIRS
    rows = two.read(S.PAIRS, filter=stage).to_pandas()
    dataset_id = rows.dataset_id.iloc[0]
    keys = [f"pairs/cmpa/{dataset_id}/small_cnn/epoch{e}/test/embedding" for e in (1, 2)]
    assert sorted(rows.unit_key.unique()) == keys  # one unit per (dataset, arch, probe epoch)
    # per epoch: one seed pair x 3 metrics x every layer pair, seed 0 as side A
    assert len(rows) == 2 * 3 * len(LAYERS) ** 2
    assert (rows.seed_a == 0).all() and (rows.seed_b == 1).all()
    assert (rows.epoch == rows.epoch_b).all() and (rows.experiment_b == "cmpa").all()
    assert set(rows.metric) == {"cka", "cka_debiased", "mknn"}
    # independent recomputation from the stored embeddings
    for metric, score in (("cka", linear_cka), ("mknn", mutual_knn_alignment)):
        row = rows[(rows.metric == metric) & (rows.epoch == 2)].iloc[5]
        X = side_rows(two, row.run_a, row.epoch, row.layer_a)
        Y = side_rows(two, row.run_b, row.epoch_b, row.layer_b)
        assert row.value == pytest.approx(score(X, Y), rel=1e-9, abs=1e-12)
    debiased = rows[(rows.metric == "cka_debiased") & (rows.layer_a == rows.layer_b)]
    plain = rows[(rows.metric == "cka") & (rows.layer_a == rows.layer_b)]
    assert not np.allclose(debiased.value, plain.value)  # the two estimators differ
    # the report's cross-seed ARI is still read from its own rows
    layers, ari = consistency_matrix(
        two, "cmpa", dataset_id, "small_cnn", epoch=2, method="ward", factor=1
    )
    assert layers == list(LAYERS) and not np.isnan(ari).any() and ari.max() <= 1 + 1e-12
    # resume: a lost unit is recomputed alone, to the same values
    two.delete_units(S.PAIRS, [keys[0]])
    counts = run_experiment(tiny("cmpa", (0, 1), SHAPES, [1, 2], 2, SIMILARITY), two)
    assert counts.committed == {"score": 1}
    again = two.read(S.PAIRS, filter=stage).to_pandas()
    merged = rows.merge(again, on=["unit_key", "metric", "layer_a", "layer_b"])
    assert len(merged) == len(rows) and np.allclose(merged.value_x, merged.value_y, atol=1e-12)


def test_compare_plan_counts_what_the_compare_stores(two):
    selection = dict(epochs=[1], metrics=("ami", "cka_debiased"))  # units no other test makes
    plan = plan_compare(two, ["cmpa", "cmpb"], **selection)
    rows_before, bytes_before = two.read(S.PAIRS).num_rows, stored_bytes(two.root, S.PAIRS)
    assert run_compare(two, ["cmpa", "cmpb"], **selection) == (plan.pending, 0)
    assert plan.sides == 3 and plan.units == plan.pending == 3 * 2  # 3 pairs of sides x 2
    assert two.read(S.PAIRS).num_rows - rows_before == plan.rows
    added = stored_bytes(two.root, S.PAIRS) - bytes_before
    assert abs(plan.pairs_bytes - added) <= max(0.1 * added, 4096), (plan.pairs_bytes, added)
    # reads: each side's clusterings once per pair it is in (2 of the 3), each (side, layer)
    # table once for CKA, and the sample_index of every (side, layer)
    expected = 0
    runs = two.read(S.RUNS, filter="experiment_id IN ('cmpa', 'cmpb')").to_pandas()
    for run in runs.itertuples():
        clusterings = two.read(S.CLUSTERINGS, filter=where(run_id=run.run_id, epoch=1)).to_pandas()
        expected += 2 * 12 * sum(len(index) for index in clusterings.sample_index)
        for layer in LAYERS:
            X = two.embedding_array(
                run.experiment_id, "small_cnn", layer, run_id=run.run_id, epoch=1, split="test"
            )
            expected += X.nbytes + len(X) * 8
    assert plan.read_bytes == expected
    again = plan_compare(two, ["cmpa", "cmpb"], **selection)
    assert (again.pending, again.rows, again.read_bytes) == (0, 0, 0)
    result = CliRunner().invoke(
        app,
        ["compare", "cmpa", "cmpb", "--epochs", "1", "--metrics", "ami", "--plan", "--json"]
        + ["--store", two.root],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pending"] == 0


def test_report_draws_compares_as_layer_heatmaps(two, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    run_compare(two, ["cmpa", "cmpb"], metrics=("ari", "cka", "mknn"))  # done once per store
    pairs = compare_pairs(two, "cmpa", ["ward"])
    assert {"cmpa", "cmpb"} == set(pairs.experiment_b) and set(pairs.method) == {"ward", EMBED}
    figures = dict(compare_figures(pairs))
    assert {"compare_ari", "compare_cka", "compare_mknn"} <= set(figures)
    cka = pairs[pairs.metric == "cka"]
    panels = [ax for ax in figures["compare_cka"].axes if ax.images]
    sides = ["experiment_id", "arch", "epoch", "experiment_b", "arch_b", "epoch_b"]
    assert len(panels) == cka.groupby(sides).ngroups
    # the first panel: cmpa's seeds at epoch 1 (the score stage's rows; compare's are the same)
    first = cka[(cka.experiment_b == "cmpa") & (cka.epoch == 1) & (cka.epoch_b == 1)]
    assert len(first) == len(LAYERS) ** 2  # one row per layer pair, not one per source
    expected = first.pivot_table(index="layer_a", columns="layer_b", values="value")
    image = panels[0].images[0].get_array()
    assert np.allclose(image, expected.loc[list(LAYERS), list(LAYERS)].to_numpy())
    page = write_report(two, "cmpa", tmp_path)
    assert 'src="compare_cka.png"' in page.read_text()
    assert (tmp_path / "compare_mknn.png").stat().st_size > 0


def test_query_service_answers_the_stage_cka_as_seed_matrices(two):
    from fastapi.testclient import TestClient

    from services.api import ServiceSettings, create_app

    client = TestClient(create_app(ServiceSettings(store=two.root)))
    params = {"shape": "matrix", "method": EMBED, "metric": "cka", "epoch": 2}
    answer = client.get("/v1/experiments/cmpa/pairs", params=params)
    assert answer.status_code == 200, answer.text
    matrix = answer.json()
    assert matrix["layers"] == list(LAYERS) and matrix["metric"] == "cka"
    assert [(m["seed_a"], m["seed_b"]) for m in matrix["matrices"]] == [(0, 1)]
    rows = two.read(
        S.PAIRS, filter="experiment_id = 'cmpa' AND metric = 'cka' AND epoch = 2" + SEED_PAIRS
    ).to_pandas()
    expected = rows.pivot_table(index="layer_a", columns="layer_b", values="value")
    np.testing.assert_allclose(
        matrix["matrices"][0]["values"], expected.loc[list(LAYERS), list(LAYERS)].to_numpy()
    )


def test_query_service_answers_compare_rows_as_side_a_x_side_b_matrices(two):
    from fastapi.testclient import TestClient

    from services.api import ServiceSettings, create_app

    run_compare(two, ["cmpa", "cmpb"], metrics=("ari", "cka", "mknn"))  # resumes: no-op if run
    client = TestClient(create_app(ServiceSettings(store=two.root)))
    url = "/v1/experiments/cmpa/pairs"
    params = {"shape": "matrix", "source": "compare", "metric": "cka", "experiment_b": "cmpb"}
    answer = client.get(url, params=params)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["metric"] == "cka" and body["experiment_id"] == "cmpa"
    rows = two.read(
        S.PAIRS,
        filter="unit_key LIKE 'compare/%' AND experiment_id = 'cmpa' AND experiment_b = 'cmpb'"
        " AND metric = 'cka'",
    ).to_pandas()
    sides = ["arch", "epoch", "seed_a", "experiment_b", "arch_b", "epoch_b", "seed_b"]
    assert len(body["matrices"]) == rows.groupby(sides).ngroups > 0
    for matrix in body["matrices"]:
        assert matrix["layers_a"] == list(LAYERS) and matrix["layers_b"] == list(LAYERS)
        part = rows[
            (rows.epoch == matrix["epoch"])
            & (rows.seed_a == matrix["seed_a"])
            & (rows.epoch_b == matrix["epoch_b"])
            & (rows.seed_b == matrix["seed_b"])
        ]
        expected = part.pivot_table(index="layer_a", columns="layer_b", values="value")
        np.testing.assert_allclose(
            matrix["values"], expected.loc[list(LAYERS), list(LAYERS)].to_numpy()
        )
    # two metrics left open: one sentence naming the choice, a 4xx
    mixed = client.get(url, params={"shape": "matrix", "source": "compare"})
    assert mixed.status_code == 422 and "choose one with" in mixed.text
    absent = client.get(url, params={**params, "experiment_b": "nope"})
    assert absent.status_code == 404 and "run `stratalens compare`" in absent.text
