"""Spec features the README documents, through one reduced run of the real pipeline.

One study (digits, three seeds, two probe epochs) turns on every non-default
feature at once: ``clustering.scope: all``, ``training.loss: squared_error``,
``metrics`` selections, ``storage.embedding_dtype: float16``. Then the CLI on
that store (``ls``, ``show``, ``report``), the CLI's answer to a NaN embedding
and to a wrong dimension, and the learning-rate schedule against its formula.
"""

import itertools
import math
import re

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn import metrics as skm
from typer.testing import CliRunner

from actors.datasets import DatasetConfig
from actors.models import probe_layers
from actors.training import Trainer, TrainingConfig
from jobs.cli import app
from jobs.pipeline import register_experiment, run_experiment
from jobs.spec import ExperimentSpec
from services.report import layer_profile
from storage import EmbeddingStore, embedding_matrix, embeddings_table
from storage import schema as S
from storage.filters import where

pytestmark = pytest.mark.integration
LAYERS = list(probe_layers("small_cnn"))
SEEDS = (0, 1, 2)
EPOCHS = (1, 2)
DIGITS = DatasetConfig("digits", "coarse")
TRAINING = {"epochs": 2, "batch_size": 64, "lr": 0.1, "warmup_epochs": 1}
SPEC = {
    "name": "features",
    "datasets": [{"name": "digits", "hierarchy": "coarse"}],
    "archs": ["small_cnn"],
    "seeds": list(SEEDS),
    "training": TRAINING | {"loss": "squared_error"},
    "probe_epochs": list(EPOCHS),
    "clustering": {"methods": ["ward"], "overclustering_factors": [1], "scope": "all"},
    "metrics": {
        "clustering": ["ami", "ari"],
        "representation": ["nc1", "nc2"],
        "consistency": ["ami", "nmi"],
    },
    "storage": {"embedding_dtype": "float16"},
}
runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray):
    spec = ExperimentSpec.from_dict(SPEC)
    store = EmbeddingStore(str(tmp_path_factory.mktemp("features") / "store"))
    counts = run_experiment(spec, store)
    return store, counts


@pytest.fixture(scope="module")
def digits_test_subclass():
    from actors.datasets import build_dataset

    data = build_dataset(DIGITS)
    return data.subclass("test")


def test_every_unit_of_every_probe_epoch_committed(study):
    _, counts = study
    n_runs, n_layers = len(SEEDS), len(LAYERS)
    assert counts.committed == {
        "samples": 2,
        "train + extract": n_runs * len(EPOCHS) * n_layers * 2 + n_runs,
        "cluster": n_runs * len(EPOCHS) * n_layers,
        # clusterings, layers, and one consistency unit per epoch
        "score": 2 * n_runs * len(EPOCHS) * n_layers + len(EPOCHS),
    }


def test_squared_error_runs_learn_the_superclasses(study):
    store, _ = study
    runs = store.read(S.RUNS).to_pandas()
    assert sorted(runs.seed) == list(SEEDS)
    assert set(runs.loss) == {"squared_error"} and set(runs.epochs) == {2}
    assert (runs.test_accuracy > 0.5).all(), runs.test_accuracy  # chance is 1/5


def test_each_probe_epoch_stores_the_model_as_it_was_after_that_epoch(study):
    """Epoch 1's rows are the activations of a model trained one of two epochs (warm-up
    then cosine, squared error), not those of the final model."""
    store, _ = study
    trainer = Trainer(
        "small_cnn", DIGITS, TrainingConfig(**SPEC["training"]), seed=1, device="cpu", threads=1
    )
    for epoch in EPOCHS:
        trainer.train_to(epoch)
        _, outputs = next(trainer.iter_layer_chunks("test", ("fc2",), 1 << 20))
        stored = store.embedding_array("features", "small_cnn", "fc2", seed=1, epoch=epoch)
        stored_test = store.embeddings(
            "features", "small_cnn", "fc2", seed=1, epoch=epoch, split="test"
        )
        np.testing.assert_array_equal(stored_test.column("sample_index"), np.arange(539))
        assert len(stored) == 1797  # train and test
        np.testing.assert_allclose(
            embedding_matrix(stored_test), outputs["fc2"].astype(np.float16), rtol=2e-3, atol=1e-3
        )
    epoch1, epoch2 = (
        store.embedding_array("features", "small_cnn", "fc2", seed=1, epoch=e, split="test")
        for e in EPOCHS
    )
    assert np.abs(epoch1 - epoch2).max() > 0.1


def test_float16_storage_reads_float32_unless_asked(study):
    store, _ = study
    table = embeddings_table("features", "small_cnn", "conv2")
    vector = lance.dataset(store.uri(table)).schema.field(S.EMBEDDING).type
    assert vector == pa.list_(pa.float16(), 32)
    as_read = store.embedding_array("features", "small_cnn", "conv2", seed=0, epoch=2)
    stored = store.embedding_array("features", "small_cnn", "conv2", seed=0, epoch=2, dtype=None)
    assert as_read.dtype == np.float32 and stored.dtype == np.float16
    np.testing.assert_array_equal(as_read, stored.astype(np.float32))


def test_scope_all_clusters_the_whole_split_once(study, digits_test_subclass):
    store, _ = study
    rows = store.read(S.CLUSTERINGS).to_pylist()
    assert len(rows) == len(SEEDS) * len(EPOCHS) * len(LAYERS)
    assert {(r["seed"], r["epoch"], r["layer"]) for r in rows} == set(
        itertools.product(SEEDS, EPOCHS, LAYERS)
    )
    metrics = store.read(S.METRICS, filter=where(method="ward")).to_pandas()
    assert set(metrics.scope) == {"all"}
    for row in rows:
        assert row["scope"] == "all" and row["n_clusters"] == 10  # every digit
        assert sorted(row["sample_index"]) == list(range(len(digits_test_subclass)))
        assert len(set(row["labels"])) == 10
        stored = metrics[
            (metrics.run_id == row["run_id"])
            & (metrics.epoch == row["epoch"])
            & (metrics.layer == row["layer"])
        ].set_index("metric")["value"]
        truth = digits_test_subclass[row["sample_index"]]
        assert stored["ami"] == pytest.approx(skm.adjusted_mutual_info_score(truth, row["labels"]))
        assert stored["ari"] == pytest.approx(skm.adjusted_rand_score(truth, row["labels"]))


def test_metrics_selection_stores_exactly_those_rows(study):
    store, _ = study
    metrics = store.read(S.METRICS).to_pandas()
    keys = ["run_id", "epoch", "layer", "metric"]
    assert not metrics.duplicated(keys).any()
    per_layer = len(SEEDS) * len(EPOCHS) * len(LAYERS)
    ward = metrics[metrics.method == "ward"]
    assert sorted(ward.metric.value_counts().items()) == [("ami", per_layer), ("ari", per_layer)]
    representation = metrics[metrics.method == "representation"]
    assert set(metrics.method) == {"ward", "representation"}
    assert sorted(representation.metric.value_counts().items()) == [
        (f"{name}_{level}", per_layer)
        for name in ("nc1", "nc2")
        for level in ("subclass", "superclass")
    ]

    # NC1 and NC2 of one layer, from their definitions, on the stored train rows
    rows = store.embeddings("features", "small_cnn", "fc1", seed=2, epoch=1, split="train")
    X = embedding_matrix(rows).astype(np.float64)
    for level in ("subclass", "superclass"):
        y = rows.column(level).to_numpy()
        classes = np.unique(y)
        means = np.stack([X[y == c].mean(0) for c in classes])
        centred = means - means.mean(0)
        within = sum(
            (X[y == c] - m).T @ (X[y == c] - m) for c, m in zip(classes, means, strict=True)
        )
        between = centred.T @ centred / len(classes)
        nc1 = np.trace(within / len(X) @ np.linalg.pinv(between)) / len(classes)
        gram = centred @ centred.T
        k = len(classes)
        etf = (np.eye(k) - 1 / k) / np.sqrt(k - 1)
        nc2 = np.linalg.norm(gram / np.linalg.norm(gram) - etf)
        stored = representation[
            (representation.seed == 2)
            & (representation.epoch == 1)
            & (representation.layer == "fc1")
        ].set_index("metric")["value"]
        assert stored[f"nc1_{level}"] == pytest.approx(nc1, rel=1e-6)
        assert stored[f"nc2_{level}"] == pytest.approx(nc2, rel=1e-6)


def test_pairs_hold_every_seed_pair_and_layer_pair_for_each_metric_and_epoch(study):
    store, _ = study
    pairs = store.read(S.PAIRS).to_pandas()
    expected = {
        (epoch, metric, a, b, layer_a, layer_b)
        for epoch in EPOCHS
        for metric in ("ami", "nmi")
        for a, b in itertools.combinations(SEEDS, 2)
        for layer_a in LAYERS
        for layer_b in LAYERS
    }
    got = list(
        zip(
            pairs.epoch,
            pairs.metric,
            pairs.seed_a,
            pairs.seed_b,
            pairs.layer_a,
            pairs.layer_b,
            strict=True,
        )
    )
    assert len(got) == len(expected) and set(got) == expected
    assert set(pairs.scope) == {"all"}

    clusterings = {
        (r["seed"], r["epoch"], r["layer"]): r for r in store.read(S.CLUSTERINGS).to_pylist()
    }
    score = {"ami": skm.adjusted_mutual_info_score, "nmi": skm.normalized_mutual_info_score}
    for row in pairs.iloc[:: len(pairs) // 25].itertuples():
        a = clusterings[row.seed_a, row.epoch, row.layer_a]
        b = clusterings[row.seed_b, row.epoch, row.layer_b]
        labels_b = dict(zip(b["sample_index"], b["labels"], strict=True))
        aligned = [labels_b[i] for i in a["sample_index"]]
        assert row.value == pytest.approx(score[row.metric](a["labels"], aligned), abs=1e-9)


def test_cli_ls_show_and_report_on_the_store(study, tmp_path):
    store, _ = study
    listed = runner.invoke(app, ["ls", "--store", store.root], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert re.search(r"│ features\s+│ \d{4}-\d\d-\d\d \d\d:\d\d\s+│ 3\s+│", listed.output)

    shown = runner.invoke(app, ["show", "features", "--store", store.root], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    profile = layer_profile(store, "features").set_index(["epoch", "layer"])
    rows = {}
    for line in shown.output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[3] in LAYERS:  # dataset, arch, epoch, layer, AMI
            rows[int(cells[2]), cells[3]] = cells[4]
    assert set(rows) == set(itertools.product(EPOCHS, LAYERS))
    for key, cell in rows.items():
        assert cell == f"{profile.ami_mean[key]:.3f} ± {profile.ami_std[key]:.3f}"
    # the spec stored no purity and no NCC: no such columns
    assert "purity" not in shown.output and "NCC" not in shown.output

    out = tmp_path / "report"
    written = runner.invoke(app, ["report", "features", "--out", str(out), "--store", store.root])
    assert written.exit_code == 0, written.output
    html = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+\.png)"', html)
    dataset_id = store.read(S.RUNS).column("dataset_id")[0].as_py()
    assert images == [
        "ami_vs_layer_ward.png",
        "ami_vs_epoch_ward.png",
        f"ami_{dataset_id}_small_cnn_ward.png",  # no ARI between seeds was asked for
    ]
    assert all((out / name).stat().st_size > 10_000 for name in images)
    assert "scores are means over the whole split (scope: all)" in html
    assert "<h4>all samples</h4>" in html and "fc2, epoch 2, seed 0" in html


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    lr, epochs = 0.1, 4
    trainer = Trainer(
        "small_cnn",
        DIGITS,
        TrainingConfig(epochs=epochs, batch_size=64, lr=lr, warmup_epochs=1),
        seed=0,
        device="cpu",
        threads=1,
    )
    steps = math.ceil(len(trainer.data.images["train"]) / 64)  # 1,258 digits in batches of 64
    assert steps == 20

    def lr_at(step: int) -> float:
        trainer._set_lr(step)
        return trainer._optimizer.param_groups[0]["lr"]

    # warm-up: (step + 1) / 20 of the peak; then 0.1 * (1 + cos(pi * t)) / 2 for t = 0..59/60
    assert lr_at(0) == pytest.approx(lr / 20)
    assert lr_at(9) == pytest.approx(lr / 2)
    assert lr_at(19) == pytest.approx(lr)
    assert lr_at(20) == pytest.approx(lr)
    assert lr_at(35) == pytest.approx(lr * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(50) == pytest.approx(lr / 2)
    assert lr_at(79) == pytest.approx(lr * (1 + math.cos(math.pi * 59 / 60)) / 2)
    schedule = [lr_at(step) for step in range(epochs * steps)]
    assert np.all(np.diff(schedule[:20]) > 0) and np.all(np.diff(schedule[20:]) < 0)

    no_warmup = Trainer(
        "small_cnn", DIGITS, TrainingConfig(epochs=2, lr=lr, warmup_epochs=0), seed=0, threads=1
    )
    no_warmup._set_lr(0)
    assert no_warmup._optimizer.param_groups[0]["lr"] == pytest.approx(lr)

    trainer.train_to(1)  # the last step of epoch 1 is the end of the warm-up
    assert trainer._optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    trainer.train_to(epochs)
    assert trainer._optimizer.param_groups[0]["lr"] == pytest.approx(schedule[-1])


def test_squared_error_is_the_mean_squared_distance_to_one_hot_targets():
    trainer = Trainer(
        "small_cnn", DIGITS, TrainingConfig(loss="squared_error"), seed=0, device="cpu", threads=1
    )
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    y = torch.tensor([2, 0])
    targets = torch.tensor([[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    expected = ((logits - targets) ** 2).sum() / logits.numel()
    assert trainer._loss(logits, y).item() == pytest.approx(expected.item())


# -- bad input through `stratalens run`: one sentence, exit code 2 -------------------
def _spec_file(tmp_path, name: str, lr: float) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ndatasets: [{{name: digits, hierarchy: coarse}}]\narchs: [small_cnn]\n"
        f"seeds: [0]\ntraining: {{epochs: 1, lr: {lr}}}\nclustering: {{methods: [ward]}}\n"
    )
    return str(path)


def _error_sentence(output: str) -> str:
    """The error the CLI printed, which must be one sentence on one line."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output and "ray::" not in output, output
    return errors[0]


def test_cli_refuses_a_nan_embedding(local_ray, tmp_path):
    """An lr of 1e4 turns every weight into NaN in the first epoch."""
    root = str(tmp_path / "store")
    result = runner.invoke(app, ["run", _spec_file(tmp_path, "nan", 1e4), "--store", root])
    assert result.exit_code == 2, result.output
    error = _error_sentence(result.output)
    assert re.fullmatch(
        r"error: \d+ embedding\(s\) for table 'embeddings/nan/small_cnn/\w+' contain NaN or "
        r"Inf; fix the model or input before writing",
        error,
    ), error
    store = EmbeddingStore(root)
    assert not any(t.startswith("embeddings/") for t in store.list_tables())
    assert store.dataset(S.RUNS) is None
    # the experiment this run began and the samples it wrote are gone: the store holds
    # what it held before (nothing), so a corrected spec can reuse the name
    assert store.read(S.EXPERIMENTS).num_rows == 0
    assert store.read(S.SAMPLES).num_rows == 0


def test_cli_refuses_a_wrong_embedding_dimension(local_ray, tmp_path):
    """A layer table that already holds 4-dimensional rows refuses conv1's 16.

    The experiment was begun by an earlier call (as when a model's code changed under
    the same arch name), so its rows stay as they were.
    """
    root = str(tmp_path / "store")
    store = EmbeddingStore(root)
    spec_path = _spec_file(tmp_path, "dim", 0.1)
    register_experiment(ExperimentSpec.from_yaml(spec_path), store, fresh=False)
    table = embeddings_table("dim", "small_cnn", "conv1")
    values = np.zeros((2, 4), np.float32)
    rows = S.embedding_rows(
        values,
        sample_index=[0, 1],
        subclass=[0, 0],
        superclass=[0, 0],
        experiment_id="other",
        run_id="other",
        dataset_id="d",
        arch="small_cnn",
        seed=0,
        epoch=1,
        split="test",
    )
    store.write_unit(table, "other", rows, S.embeddings_schema(4))
    version = store.version(table)
    result = runner.invoke(app, ["run", spec_path, "--store", root])
    assert result.exit_code == 2, result.output
    error = _error_sentence(result.output)
    assert "embeddings/dim/small_cnn/conv1" in error and "[16]" in error and "[4]" in error
    assert store.version(table) == version and store.read(table).num_rows == 2
    assert store.dataset(S.RUNS) is None
    assert store.read(S.EXPERIMENTS).column("experiment_id").to_pylist() == ["dim"]
