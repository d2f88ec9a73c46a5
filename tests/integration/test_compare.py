"""`stratalens compare` through the real pipeline: two experiments over the same data."""

import numpy as np
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from actors.models import probe_layers
from jobs.cli import app
from jobs.compare import CompareError, Side, _sample_orders, run_compare
from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from services.metrics import linear_cka
from services.report import SEED_PAIRS
from storage import EmbeddingStore, embedding_matrix
from storage import schema as S
from storage.filters import where
from tests.integration.conftest import SMALL_SHAPES

LAYERS = probe_layers("small_cnn")
OTHER_SHAPES = {"train_per_subclass": 10, "test_per_subclass": 5}  # another dataset_id
SHAPES = {"name": "shapes", "hierarchy": "natural", "options": SMALL_SHAPES}


def tiny(name, seeds, dataset=SHAPES, probe_epochs=None, epochs=1) -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {
            "name": name,
            "datasets": [dataset],
            "archs": ["small_cnn"],
            "seeds": list(seeds),
            "probe_epochs": probe_epochs,
            "training": {"epochs": epochs, "batch_size": 64, "lr": 0.1},
            "clustering": {"methods": ["ward"], "overclustering_factors": [1]},
        }
    )


@pytest.fixture(scope="module")
def two(tmp_path_factory, local_ray):
    """cmpa: seeds 0 and 1, probed after epochs 1 and 2; cmpb: seed 0 at epoch 1; cmpc: seed 0
    on a smaller cut of shapes (another dataset)."""
    store = EmbeddingStore(str(tmp_path_factory.mktemp("compare") / "store"))
    run_experiment(tiny("cmpa", (0, 1), probe_epochs=[1, 2], epochs=2), store)
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
    rows = two.read(S.PAIRS, filter="metric IN ('ami', 'cka_debiased')").to_pandas()
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
    sides = [Side("e", "small_cnn", "d", 0, 1, run, "test") for run in ("r0", "r1")]
    with pytest.raises(CompareError, match="not the same sample_index set"):
        _sample_orders(store, sides, {side: ["fc2"] for side in sides})
