"""The reduced quickstart through the real pipeline: local Ray, Lance in a tmp dir."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn import metrics as skm
from typer.testing import CliRunner

from actors.models import LayerTaps, probe_layers
from jobs.cli import app
from jobs.pipeline import run_experiment, run_plans
from jobs.spec import ExperimentSpec, SpecError
from services.report import layer_profile, write_report
from storage import EmbeddingStore, embedding_matrix, embeddings_table
from storage import schema as S
from storage.filters import where
from tests.integration.conftest import small_spec

pytestmark = pytest.mark.integration
LAYERS = probe_layers("small_cnn")
EPOCHS = 4


@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray):
    # four epochs: enough for the heads to catch up with the features (see the NCC test)
    spec = ExperimentSpec.from_dict(small_spec(epochs=EPOCHS))
    store = EmbeddingStore(str(tmp_path_factory.mktemp("study") / "store"))
    counts = run_experiment(spec, store)
    return spec, store, counts


def test_every_stage_committed(study):
    spec, store, counts = study
    runs = store.read(S.RUNS).to_pandas()
    assert len(runs) == 4 and set(runs.status) == {"done"}
    assert runs.test_accuracy.between(0, 1).all()
    digits = runs[runs.dataset == "digits"]
    assert (digits.test_accuracy > 0.5).all()  # chance is 1/5 superclasses
    assert counts.committed == {
        "samples": 2 * 2,  # (dataset, split)
        "train + extract": 4 * len(LAYERS) * 2 + 4,  # (run, layer, split) and the runs rows
        "cluster": 4 * len(LAYERS) * 2,  # (run, layer, method)
        # the clusterings of each cluster unit, each (run, layer), and each (dataset, method,
        # factor) for the seed pairs
        "score": 4 * len(LAYERS) * 2 + 4 * len(LAYERS) + 2 * 2 * 2,
    }


def test_embeddings_once_per_run_split_sample(study):
    spec, store, _ = study
    samples = store.read(S.SAMPLES, columns=["dataset_id"]).to_pandas()
    expected_rows = 2 * len(samples)  # two seeds per dataset, all samples of both splits
    for layer in LAYERS:
        rows = store.read(embeddings_table("it", "small_cnn", layer)).to_pandas()
        assert len(rows) == expected_rows
        assert not rows.duplicated(["run_id", "epoch", "split", "sample_index"]).any()
        assert np.isfinite(np.stack(rows.embedding.to_numpy())).all()


def test_clusterings_have_k_clusters_within_each_superclass(study):
    _, store, _ = study
    rows = store.read(S.CLUSTERINGS).to_pylist()
    # 4 runs x 6 layers x 2 methods x 5 superclasses x 2 factors
    assert len(rows) == 4 * len(LAYERS) * 2 * 5 * 2
    samples = store.read(S.SAMPLES).to_pandas().set_index(["dataset_id", "split", "sample_index"])
    for row in rows[:: len(rows) // 40]:
        superclasses = samples.loc[
            [(row["dataset_id"], "test", i) for i in row["sample_index"]], "superclass"
        ]
        assert superclasses.nunique() == 1
        assert row["scope"] == f"superclass={superclasses.iloc[0]}"
        assert len(set(row["labels"])) == row["n_clusters"]
        per_super = 2 if row["dataset_id"].startswith("digits") else 4
        assert row["n_clusters"] == per_super * row["overclustering_factor"]


def test_stored_scores_match_an_independent_recomputation(study):
    _, store, _ = study
    samples = store.read(S.SAMPLES).to_pandas().set_index(["dataset_id", "split", "sample_index"])
    metrics = store.read(S.METRICS).to_pandas()
    clusterings = store.read(S.CLUSTERINGS).to_pylist()
    checked = 0
    for row in clusterings[::7]:
        truth = samples.loc[
            [(row["dataset_id"], row["split"], i) for i in row["sample_index"]], "subclass"
        ].to_numpy()
        stored = metrics[
            (metrics.run_id == row["run_id"])
            & (metrics.layer == row["layer"])
            & (metrics.method == row["method"])
            & (metrics.scope == row["scope"])
            & (metrics.n_clusters == row["n_clusters"])
        ].set_index("metric")["value"]
        assert stored["ami"] == pytest.approx(
            skm.adjusted_mutual_info_score(truth, row["labels"]), abs=1e-12
        )
        assert stored["ari"] == pytest.approx(
            skm.adjusted_rand_score(truth, row["labels"]), abs=1e-12
        )
        assert stored["nmi"] == pytest.approx(
            skm.normalized_mutual_info_score(truth, row["labels"]), abs=1e-12
        )
        table = skm.cluster.contingency_matrix(truth, row["labels"])
        assert stored["purity"] == pytest.approx(table.max(axis=0).sum() / table.sum())
        checked += 1
    assert checked > 20


def test_ncc_matches_an_independent_recomputation(study):
    _, store, _ = study
    run_id = store.read(S.RUNS).column("run_id")[0].as_py()
    rows = store.embeddings("it", "small_cnn", "fc2", run_id=run_id)
    X = embedding_matrix(rows)
    split = rows.column("split").to_numpy(zero_copy_only=False)
    train, test = split == "train", split == "test"
    for level in ("subclass", "superclass"):
        y = rows.column(level).to_numpy()
        classes = np.unique(y[train])
        means = np.stack([X[train][y[train] == c].mean(0) for c in classes])
        nearest = classes[((X[test][:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
        stored = (
            store.read(S.METRICS, filter=where(run_id=run_id, layer="fc2", metric=f"ncc_{level}"))
            .column("value")[0]
            .as_py()
        )
        assert stored == pytest.approx((nearest == y[test]).mean(), abs=1e-9)

    # CDNV of the superclasses on the train split, from its definition
    sup = rows.column("superclass").to_numpy()[train]
    Xt = X[train].astype(np.float64)
    mu = {c: Xt[sup == c].mean(0) for c in np.unique(sup)}
    var = {c: ((Xt[sup == c] - mu[c]) ** 2).sum(1).mean() for c in mu}
    expected = np.mean(
        [(var[i] + var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum()) for i in mu for j in mu if i != j]
    )
    stored_cdnv = (
        store.read(S.METRICS, filter=where(run_id=run_id, layer="fc2", metric="cdnv_superclass"))
        .column("value")[0]
        .as_py()
    )
    assert stored_cdnv == pytest.approx(expected, rel=1e-9)


def test_cross_seed_ari_covers_every_layer_pair(study):
    _, store, _ = study
    pairs = store.read(S.PAIRS, filter=where(method="ward", overclustering_factor=1)).to_pandas()
    for _, group in pairs.groupby("dataset_id"):
        assert set(zip(group.layer_a, group.layer_b, strict=True)) == {
            (a, b) for a in LAYERS for b in LAYERS
        }
        assert (group.seed_a == 0).all() and (group.seed_b == 1).all()
        assert group.value.between(-1, 1).all()
    one = pairs.iloc[0]
    a, b = (
        store.read(
            S.CLUSTERINGS,
            filter=where(
                run_id=one[run],
                layer=one[layer],
                method="ward",
                overclustering_factor=1,
                scope=one.scope,
            ),
        ).to_pylist()[0]
        for run, layer in (("run_a", "layer_a"), ("run_b", "layer_b"))
    )
    assert a["sample_index"] == b["sample_index"]
    assert one.value == pytest.approx(skm.adjusted_rand_score(a["labels"], b["labels"]))


def test_rerun_does_nothing_and_changes_no_table(study):
    spec, store, _ = study
    versions = {t: store.version(t) for t in store.list_tables()}
    counts = run_experiment(spec, store)
    assert counts.committed == {}
    assert {t: store.version(t) for t in store.list_tables()} == versions


def test_changed_spec_is_refused_and_store_unchanged(study):
    spec, store, _ = study
    versions = {t: store.version(t) for t in store.list_tables()}
    changed = ExperimentSpec.from_dict(small_spec(epochs=EPOCHS + 1))
    with pytest.raises(SpecError, match="different spec; pass --fresh"):
        run_experiment(changed, store)
    assert {t: store.version(t) for t in store.list_tables()} == versions


def test_report_and_profile(study, tmp_path):
    _, store, _ = study
    profile = layer_profile(store, "it")
    assert list(profile[profile.dataset == "digits"].layer) == list(LAYERS)
    assert set(profile.epoch) == {EPOCHS} and set(profile.n_seeds) == {2}
    # the same means from the metrics table: over superclasses, then over seeds
    metrics = store.read(S.METRICS, filter=where(method="ward", overclustering_factor=1))
    per_seed = metrics.to_pandas().groupby(["dataset_id", "layer", "metric", "seed"]).value.mean()
    expected = per_seed.groupby(["dataset_id", "layer", "metric"]).agg(["mean", "std"])
    assert len(profile) == 2 * len(LAYERS)
    for row in profile.itertuples():
        for metric in ("ami", "purity"):
            mean, std = expected.loc[(row.dataset_id, row.layer, metric)]
            assert getattr(row, f"{metric}_mean") == pytest.approx(mean, abs=1e-12)
            assert getattr(row, f"{metric}_std") == pytest.approx(std, abs=1e-12)
    page = write_report(store, "it", tmp_path / "report")
    html = page.read_text()
    for name in (
        "ami_vs_layer_ward.png",
        "purity_vs_layer_kmeans.png",
        "ncc_subclass_vs_layer.png",
    ):
        assert name in html and (tmp_path / "report" / name).stat().st_size > 10_000
    assert "_vs_epoch" not in html  # one probe epoch: nothing to draw against epoch
    assert sum(1 for p in (tmp_path / "report").glob("ari_*.png")) == 4
    assert "<h2>Clusters (ward" in html and 'src="data:image/png;base64,' in html


def test_cluster_gallery_shows_the_stored_clusters_with_their_thumbnails(study):
    import io

    from PIL import Image

    from services.gallery import cluster_gallery, gallery_html
    from storage import StoreError

    _, store, _ = study
    runs = store.read(S.RUNS, filter=where(experiment_id="it", dataset="digits")).to_pandas()
    dataset_id, layer = runs.dataset_id.iloc[0], LAYERS[-1]
    keys = dict(dataset_id=dataset_id, arch="small_cnn", seed=0, layer=layer, method="ward")
    gallery = cluster_gallery(store, "it", factor=1, clusters=3, images=4, **keys)
    stored = store.read(
        S.CLUSTERINGS, filter=where(experiment_id="it", overclustering_factor=1, **keys)
    ).to_pylist()
    samples = store.read(S.SAMPLES, filter=where(dataset_id=dataset_id, split="test"))
    samples = samples.to_pandas().set_index("sample_index")
    assert len(gallery) == min(4, len(stored))
    for row, (superclass, views) in zip(
        sorted(stored, key=lambda r: int(r["scope"].split("=")[1])), gallery.items(), strict=False
    ):
        index, labels = np.array(row["sample_index"]), np.array(row["labels"])
        assert superclass == samples.superclass_name[index[0]]
        sizes = [v.size for v in views]
        assert sizes == sorted(np.bincount(labels), reverse=True)[:3]
        for view in views:
            members = index[labels == view.cluster]
            assert view.size == len(members)
            names = samples.subclass_name[members].value_counts()
            assert view.subclasses[0][1] == names.iloc[0]
            assert view.thumbnails == list(samples.thumbnail[members[:4]])
            assert Image.open(io.BytesIO(view.thumbnails[0])).size == (32, 32)  # 8 px upscaled
    assert gallery_html(gallery).count('src="data:image/png;base64,') == sum(
        len(v.thumbnails) for views in gallery.values() for v in views
    )
    with pytest.raises(StoreError, match="no 'ward' clustering of layer 'nope'"):
        cluster_gallery(store, "it", factor=1, **(keys | {"layer": "nope"}))


def test_cli_show_and_export(study, tmp_path):
    _, store, _ = study
    runner = CliRunner()
    result = runner.invoke(app, ["show", "it", "--store", store.root], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    profile = layer_profile(store, "it").set_index(["dataset", "layer"])
    shown = {}
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and cells[3] in LAYERS:
            shown[cells[0].split(" / ")[0], cells[3]] = cells
    assert set(shown) == set(profile.index)
    for key, cells in shown.items():
        row = profile.loc[key]
        assert cells[2] == str(EPOCHS)  # the probe epoch
        assert cells[4:] == [
            f"{row.ami_mean:.3f} ± {row.ami_std:.3f}",
            f"{row.purity_mean:.3f}",
            f"{row.ncc_subclass_mean:.3f}",
            f"{row.ncc_superclass_mean:.3f}",
        ]
    out = tmp_path / "fc2.npy"
    export = "embeddings it --arch small_cnn --layer fc2 --seed 1 --split test --superclass 2"
    result = runner.invoke(app, [*export.split(), "--out", str(out), "--store", store.root])
    assert result.exit_code == 0, result.output
    exported = np.load(out)
    expected = store.embeddings("it", "small_cnn", "fc2", seed=1, split="test", superclass=2)
    np.testing.assert_array_equal(exported, embedding_matrix(expected))
    conv1 = store.embeddings("it", "small_cnn", "conv1")
    for suffix in (".parquet", ".arrow"):
        args = ["embeddings", "it", "--arch", "small_cnn", "--layer", "conv1"]
        out_file = tmp_path / f"x{suffix}"
        result = runner.invoke(app, [*args, "--out", str(out_file), "--store", store.root])
        assert result.exit_code == 0, result.output
        assert f"wrote {conv1.num_rows} x 16 to" in result.output
        if suffix == ".parquet":
            written = pq.read_table(out_file)
        else:
            written = pa.ipc.open_file(out_file).read_all()
        assert written.column("sample_index").equals(conv1.column("sample_index"))
        np.testing.assert_array_equal(embedding_matrix(written), embedding_matrix(conv1))


def test_external_readers_open_the_tables(study):
    duckdb = pytest.importorskip("duckdb")
    import lance

    _, store, _ = study
    runs = lance.dataset(f"{store.root}/runs").to_table()  # noqa: F841  (read by DuckDB below)
    assert duckdb.sql("SELECT count(*) FROM runs").fetchall()[0][0] == 4


@pytest.fixture(scope="module")
def retrained(study):
    """The model of each digits run, trained again in this process (training is
    deterministic for a seed on CPU with one thread, as in the trainer actor)."""
    from actors.training import Trainer

    spec, _, _ = study
    threads = torch.get_num_threads()
    models = {}
    for plan in run_plans(spec):
        if plan.dataset.name == "digits":
            trainer = Trainer(plan.arch, plan.dataset, plan.training, plan.seed, threads=1)
            trainer.train_to(spec.training.epochs)
            models[plan.run_id] = trainer
    torch.set_num_threads(threads)
    return models


def test_stored_rows_are_the_activations_of_the_samples_they_are_filed_under(study, retrained):
    _, store, _ = study
    rng = np.random.RandomState(0)
    for run_id, trainer in retrained.items():
        for layer in LAYERS:
            for split in ("train", "test"):
                rows = store.embeddings(
                    "it", "small_cnn", layer, run_id=run_id, split=split, epoch=EPOCHS
                )
                picked = rng.choice(rows.num_rows, 5, replace=False)
                index = rows.column("sample_index").to_numpy()[picked]
                stored = embedding_matrix(rows.take(picked))
                images = torch.from_numpy(trainer.data.images[split][index])
                trainer.model.eval()
                with torch.no_grad(), LayerTaps(trainer.model, [layer]) as taps:
                    trainer.model(images)
                    expected = taps.outputs[layer].numpy()
                np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
                # a row filed one sample off would be far outside that tolerance
                with torch.no_grad(), LayerTaps(trainer.model, [layer]) as taps:
                    n = trainer.data.num_samples(split)
                    trainer.model(torch.from_numpy(trainer.data.images[split][(index + 1) % n]))
                    shifted = taps.outputs[layer].numpy()
                assert np.abs(shifted - stored).max() > 1e-2
                np.testing.assert_array_equal(
                    rows.column("subclass").to_numpy()[picked], trainer.data.subclass(split)[index]
                )


def test_penultimate_ncc_tracks_the_superclass_accuracy_and_conv2_clusters_digits(study):
    _, store, _ = study
    runs = store.read(S.RUNS).to_pandas().set_index("run_id")
    ncc = store.read(
        S.METRICS, filter=where(metric="ncc_superclass", layer="fc2", split="test")
    ).to_pandas()
    digits = ncc[ncc.dataset_id.str.startswith("digits")]
    assert len(digits) == 2
    for row in digits.itertuples():
        accuracy = runs.loc[row.run_id, "test_accuracy"]
        assert abs(row.value - accuracy) <= 0.05, (row.run_id, row.value, accuracy)
    ami = store.read(
        S.METRICS, filter=where(metric="ami", method="ward", layer="conv2", overclustering_factor=1)
    ).to_pandas()
    per_seed = ami[ami.dataset_id.str.startswith("digits")].groupby("seed").value.mean()
    # two digits per superclass: chance AMI is ~0; the quickstart measures ~0.78
    assert len(per_seed) == 2 and (per_seed > 0.4).all(), per_seed
