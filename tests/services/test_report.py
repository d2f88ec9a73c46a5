"""Summaries of a store whose scores differ between two probe epochs (no Ray, no training).

The store is written by hand with known values, so every mean and sd is known:
a summary that averaged the two epochs together would print 0.600 for the AMI of
conv3, where epoch 1 has 0.780 and epoch 6 has 0.420.
"""

import io
import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from actors.models import probe_layers
from jobs.cli import app
from services.gallery import ALL_SAMPLES, cluster_gallery
from services.report import consistency_matrix, layer_profile, write_report
from storage import EmbeddingStore, StoreError
from storage import schema as S

EXPERIMENT, DATASET, ARCH = "two-epochs", "digits-coarse-x", "small_cnn"
LAYERS = list(probe_layers(ARCH))
EPOCHS = (1, 6)
SEEDS = (0, 1)
SCOPES = ("superclass=0", "superclass=1")
AMI_BASE = {1: 0.72, 6: 0.36}  # + 0.03 per layer: conv3 is 0.78 at epoch 1, 0.42 at epoch 6
SEED_OFFSET = {0: 0.02, 1: -0.02}  # the sd over the two seeds is 0.04 / sqrt(2)
SCOPE_OFFSET = {"superclass=0": 0.01, "superclass=1": -0.01}  # cancels in the mean over scopes
PAIR_BASE = {1: 0.9, 6: 0.3}


def ami(epoch: int, layer: str) -> float:
    """Mean over seeds and scopes of the stored AMI (factor 1)."""
    return AMI_BASE[epoch] + 0.03 * LAYERS.index(layer)


def ncc(epoch: int, layer: str) -> float:
    return 0.5 + 0.05 * LAYERS.index(layer) + (0.2 if epoch == 6 else 0.0)


def pair(epoch: int, layer_a: str, layer_b: str) -> float:
    """Mean over scopes of the stored cross-seed ARI."""
    return PAIR_BASE[epoch] + 0.01 * LAYERS.index(layer_a) + 0.001 * LAYERS.index(layer_b)


def _run_id(seed: int) -> str:
    return f"{EXPERIMENT}/{DATASET}/{ARCH}/seed{seed}"


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(store: EmbeddingStore, table: str, schema: pa.Schema, records: list[dict]) -> None:
    store.write_unit(table, table, pa.Table.from_pylist(records, schema=schema.remove(0)))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EmbeddingStore:
    """Two seeds, probe epochs 1 and 6, Ward at factors 1 and 2, every small_cnn layer."""
    store = EmbeddingStore(str(tmp_path_factory.mktemp("report") / "store"))
    run_keys = {"experiment_id": EXPERIMENT, "dataset_id": DATASET, "arch": ARCH}
    _write(
        store,
        S.RUNS,
        S.RUNS_SCHEMA,
        [
            {
                **run_keys,
                "run_id": _run_id(seed),
                "loss": "softmax_ce",
                "dataset": "digits",
                "hierarchy": "coarse",
                "seed": seed,
                "epochs": 6,
                "status": "done",
                "train_accuracy": 0.9,
                "test_accuracy": 0.8,
                "train_seconds": 1.0,
                "created_at": None,
            }
            for seed in SEEDS
        ],
    )
    metrics, pairs, clusterings = [], [], []
    for seed in SEEDS:
        for epoch in EPOCHS:
            for layer in LAYERS:
                keys = {**run_keys, "run_id": _run_id(seed), "seed": seed, "epoch": epoch}
                keys |= {"layer": layer, "split": "test"}
                for scope in SCOPES:
                    value = ami(epoch, layer) + SEED_OFFSET[seed] + SCOPE_OFFSET[scope]
                    for factor, shift in ((1, 0.0), (2, 0.05)):
                        clustering = {
                            **keys,
                            "scope": scope,
                            "method": "ward",
                            "overclustering_factor": factor,
                            "n_clusters": 2 * factor,
                        }
                        metrics.append({**clustering, "metric": "ami", "value": value + shift})
                        metrics.append({**clustering, "metric": "purity", "value": value + 0.1})
                representation = {
                    **keys,
                    "scope": "all",
                    "method": "representation",
                    "overclustering_factor": 0,
                    "n_clusters": 0,
                }
                value = ncc(epoch, layer) + SEED_OFFSET[seed]
                metrics.append({**representation, "metric": "ncc_subclass", "value": value})
    for epoch in EPOCHS:
        for a in LAYERS:
            for b in LAYERS:
                for scope in SCOPES:
                    pairs.append(
                        {
                            **run_keys,
                            "epoch": epoch,
                            "split": "test",
                            "scope": scope,
                            "method": "ward",
                            "overclustering_factor": 1,
                            "run_a": _run_id(0),
                            "seed_a": 0,
                            "layer_a": a,
                            "run_b": _run_id(1),
                            "seed_b": 1,
                            "layer_b": b,
                            "metric": "ari",
                            "value": pair(epoch, a, b) + 2 * SCOPE_OFFSET[scope],
                        }
                    )
    # fc2 of seed 0: superclass 0 holds samples 0..5, superclass 1 samples 6..9. Epoch 1
    # splits superclass 0 in 3 + 3, epoch 6 in 5 + 1. conv1 is clustered as a whole split.
    splits = {1: [0, 0, 0, 1, 1, 1], 6: [0, 0, 0, 0, 0, 1]}
    for epoch in EPOCHS:
        keys = {**run_keys, "run_id": _run_id(0), "seed": 0, "epoch": epoch, "split": "test"}
        keys |= {"method": "ward", "overclustering_factor": 1}
        for scope, index, labels in (
            ("superclass=0", list(range(6)), splits[epoch]),
            ("superclass=1", list(range(6, 10)), [0, 0, 1, 1]),
        ):
            clusterings.append(
                {**keys, "layer": "fc2", "scope": scope, "n_clusters": 2}
                | {"sample_index": index, "labels": labels}
            )
        clusterings.append(
            {**keys, "layer": "conv1", "scope": "all", "n_clusters": 2}
            | {"sample_index": list(range(10)), "labels": [0] * 7 + [1] * 3}
        )
    _write(store, S.METRICS, S.METRICS_SCHEMA, metrics)
    _write(store, S.PAIRS, S.PAIRS_SCHEMA, pairs)
    _write(store, S.CLUSTERINGS, S.CLUSTERINGS_SCHEMA, clusterings)
    _write(
        store,
        S.SAMPLES,
        S.SAMPLES_SCHEMA,
        [
            {
                "dataset_id": DATASET,
                "dataset": "digits",
                "hierarchy": "coarse",
                "split": "test",
                "sample_index": i,
                "subclass": i // 3,
                "superclass": int(i >= 6),
                "subclass_name": f"sub{i // 3}",
                "superclass_name": "low" if i < 6 else "high",
                "thumbnail": _png(20 * i),
            }
            for i in range(10)
        ],
    )
    return store


def test_layer_profile_keeps_probe_epochs_apart(store):
    profile = layer_profile(store, EXPERIMENT)
    assert len(profile) == len(EPOCHS) * len(LAYERS)
    assert list(profile.epoch) == [e for e in EPOCHS for _ in LAYERS]
    assert list(profile.layer) == LAYERS * len(EPOCHS)
    for row in profile.itertuples():
        assert row.ami_mean == pytest.approx(ami(row.epoch, row.layer))
        assert row.ami_std == pytest.approx(0.04 / np.sqrt(2))
        assert row.purity_mean == pytest.approx(ami(row.epoch, row.layer) + 0.1)
        assert row.ncc_subclass_mean == pytest.approx(ncc(row.epoch, row.layer))
        assert row.n_seeds == 2
    conv3 = profile[profile.layer == "conv3"].set_index("epoch").ami_mean
    assert conv3.to_dict() == {1: pytest.approx(0.78), 6: pytest.approx(0.42)}


def test_layer_profile_factor_and_unknown_choices(store):
    profile = layer_profile(store, EXPERIMENT, factor=2)
    assert set(profile.overclustering_factor) == {2}
    for row in profile.itertuples():
        assert row.ami_mean == pytest.approx(ami(row.epoch, row.layer) + 0.05)
    with pytest.raises(StoreError, match=r"no 'average' scores; pick one of \['ward'\]"):
        layer_profile(store, EXPERIMENT, method="average")
    with pytest.raises(StoreError, match=r"at overclustering factor 3; pick one of \[1, 2\]"):
        layer_profile(store, EXPERIMENT, factor=3)


def test_consistency_matrix_is_per_epoch(store):
    for epoch in EPOCHS:
        layers, matrix = consistency_matrix(
            store, EXPERIMENT, DATASET, ARCH, epoch=epoch, method="ward", factor=1
        )
        assert layers == LAYERS
        expected = [[pair(epoch, a, b) for b in LAYERS] for a in LAYERS]
        np.testing.assert_allclose(matrix, expected)
    _, missing = consistency_matrix(
        store, EXPERIMENT, DATASET, ARCH, epoch=1, method="ward", factor=1, metric="nmi"
    )
    assert np.isnan(missing).all()


def test_show_prints_each_probe_epoch_on_its_own_rows(store):
    result = CliRunner().invoke(
        app, ["show", EXPERIMENT, "--store", store.root], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "per probe epoch" in result.output
    rows = {}
    for line in result.output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if len(cells) == 7 and cells[3] in LAYERS:
            rows[int(cells[2]), cells[3]] = cells
    assert set(rows) == {(e, layer) for e in EPOCHS for layer in LAYERS}
    for (epoch, layer), cells in rows.items():
        assert cells[:2] == ["digits / coarse", ARCH]
        assert cells[4] == f"{ami(epoch, layer):.3f} ± {0.04 / np.sqrt(2):.3f}"
        assert cells[5] == f"{ami(epoch, layer) + 0.1:.3f}"
        assert cells[6] == f"{ncc(epoch, layer):.3f}"
    assert "NCC super" not in result.output  # the store has no ncc_superclass rows
    assert rows[1, "conv3"][4].startswith("0.780") and rows[6, "conv3"][4].startswith("0.420")


def test_report_draws_every_probe_epoch(store, tmp_path):
    page = write_report(store, EXPERIMENT, tmp_path)
    text = page.read_text()
    names = re.findall(r'<img src="([^"]+\.png)"', text)
    assert names == [
        "ami_vs_layer_ward.png",
        "purity_vs_layer_ward.png",
        "ami_vs_epoch_ward.png",
        "purity_vs_epoch_ward.png",
        f"ari_{DATASET}_{ARCH}_ward.png",
        "ncc_subclass_vs_layer.png",
        "ncc_subclass_vs_epoch.png",
    ]
    sizes = {name: Image.open(tmp_path / name).size for name in names}
    # a panel per probe epoch side by side (two panels are wider than tall), and a single
    # panel per (dataset, arch) against epoch
    for name in ("ami_vs_layer_ward.png", f"ari_{DATASET}_{ARCH}_ward.png"):
        assert sizes[name][0] > 1.6 * sizes[name][1]
    assert sizes["ami_vs_epoch_ward.png"][0] < 1.5 * sizes["ami_vs_epoch_ward.png"][1]
    assert "probe epochs: 1, 6" in text
    table = text[text.index("<h2>ward") : text.index("<h2>Nearest")]
    for epoch in EPOCHS:
        for layer in LAYERS:
            assert f"<td>{epoch}</td>\n      <td>{layer}</td>" in table
    assert "<td>0.780</td>" in table and "<td>0.420</td>" in table
    assert "<td>0.600</td>" not in table  # the two epochs averaged together
    assert "<h2>Clusters (ward, k = subclasses x 1, epoch 6)</h2>" in text
    assert "small_cnn, fc2, epoch 6, seed 0" in text


def test_gallery_shows_the_asked_probe_epoch(store):
    keys = dict(dataset_id=DATASET, arch=ARCH, seed=0, method="ward", factor=1)
    sizes = {
        epoch: [
            view.size
            for view in cluster_gallery(store, EXPERIMENT, layer="fc2", epoch=epoch, **keys)["low"]
        ]
        for epoch in EPOCHS
    }
    assert sizes == {1: [3, 3], 6: [5, 1]}
    default = cluster_gallery(store, EXPERIMENT, layer="fc2", **keys)
    assert [view.size for view in default["low"]] == sizes[6]
    assert list(default) == ["low", "high"]
    with pytest.raises(StoreError, match=r"at epoch 3; pick one of the probe epochs \[1, 6\]"):
        cluster_gallery(store, EXPERIMENT, layer="fc2", epoch=3, **keys)


def test_gallery_of_a_whole_split_clustering_is_not_named_after_a_superclass(store):
    gallery = cluster_gallery(
        store,
        EXPERIMENT,
        dataset_id=DATASET,
        arch=ARCH,
        seed=0,
        layer="conv1",
        method="ward",
        factor=1,
    )
    assert list(gallery) == [ALL_SAMPLES]
    assert [(view.size, view.subclasses[0]) for view in gallery[ALL_SAMPLES]] == [
        (7, ("sub0", 3)),
        (3, ("sub2", 2)),
    ]


def test_show_names_the_stored_methods_for_an_unknown_one(store):
    result = CliRunner().invoke(app, ["show", EXPERIMENT, "--store", store.root, "--method", "x"])
    assert result.exit_code == 2
    assert "experiment 'two-epochs' has no 'x' scores; pick one of ['ward']" in result.output
