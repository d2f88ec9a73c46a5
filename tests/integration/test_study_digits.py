"""The digits study at its smallest size through the real pipeline, its finding read back.

Both example specs (held-out and training split) are cut to two seeds, two
epochs and three arch items, run into one store, and the finding's numbers
are checked against AMI recomputed with scikit-learn from the stored
clusterings.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import adjusted_mutual_info_score

from jobs.pipeline import run_experiment
from jobs.spec import ExperimentSpec
from services.findings import digits as study
from services.findings import finding, finding_lines
from storage import EmbeddingStore
from storage import schema as S
from storage.filters import where

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"
KEPT_ARCHS = {"quickstart", "gap_4x4", "flatten_4x4"}
SEEDS = [0, 1]


def reduced(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text())
    spec["archs"] = [a for a in spec["archs"] if a["key"] in KEPT_ARCHS]
    spec["seeds"] = SEEDS
    spec["training"]["epochs"] = 2
    spec["probe_epochs"] = [1, 2]
    return spec


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory, local_ray):
    store = EmbeddingStore(str(tmp_path_factory.mktemp("digits") / "store"))
    for name in ("study_digits", "study_digits_train", "study_digits_all"):
        spec = reduced(EXAMPLES / f"{name}.yaml")
        if name == "study_digits_all":
            spec["seeds"] = SEEDS[:1]
        run_experiment(ExperimentSpec.from_dict(spec), store)
    return store


def recomputed_ami(store, experiment_id, arch, layer, epoch, seed) -> float:
    """Mean over superclasses of sklearn's AMI of the stored Ward clusterings."""
    clusterings = store.read(
        S.CLUSTERINGS,
        filter=where(
            experiment_id=experiment_id,
            arch=arch,
            layer=layer,
            epoch=epoch,
            seed=seed,
            method="ward",
            overclustering_factor=1,
        ),
    ).to_pylist()
    assert clusterings, (experiment_id, arch, layer, epoch, seed)
    first = clusterings[0]
    samples = (
        store.read(
            S.SAMPLES,
            columns=["sample_index", "subclass"],
            filter=where(dataset_id=first["dataset_id"], split=first["split"]),
        )
        .to_pandas()
        .set_index("sample_index")
        .subclass
    )
    scores = [
        adjusted_mutual_info_score(samples.loc[c["sample_index"]].to_numpy(), c["labels"])
        for c in clusterings
    ]
    return float(np.mean(scores))


def test_the_finding_reads_both_splits_and_matches_recomputed_ami(digits_store):
    runs = digits_store.read(S.RUNS, columns=["arch", "test_accuracy"]).to_pandas()
    assert (runs.test_accuracy >= study.UNTRAINED).all(), runs  # every run left chance
    found = finding(digits_store, "study_digits")
    assert found.study == "digits" and "0.6" in found.claim
    table = study.study_table(digits_store, "study_digits")
    assert set(table.split) == {"test", "train"}
    assert set(table[table.split == "train"].arch) == {"quickstart", "flatten_4x4"}
    assert set(table.arch) == KEPT_ARCHS
    assert set(table[table.scope == "all"].arch) == {"quickstart"}
    # 3 archs x 2 epochs (held-out) + 2 archs x 2 epochs (train) + 1 arch x 2 epochs (whole
    # train split), the superclass labels' own AMI, then the effects measurable
    cells = [m for m in found.measured if ": fc2 AMI" in m.label]
    assert len(cells) == 3 * 2 + 2 * 2 + 2
    for m in cells:
        split = "train" if m.label.startswith("train") else "test"
        whole = "whole split" in m.label
        experiment = {("train", False): "study_digits_train", ("test", False): "study_digits"}
        experiment = "study_digits_all" if whole else experiment[split, whole]
        seeds = SEEDS[:1] if whole else SEEDS
        assert m.n == len(seeds)
        epoch = int(m.label.split("epoch ")[1].split(":")[0])
        layer = m.label.split(": ")[1].split()[0]
        arch = next(k for k, v in study.ARCH_LABELS.items() if f", {v}," in m.label)
        assert layer == "fc2"  # every kept arch has two dense layers
        per_seed = [
            recomputed_ami(digits_store, experiment, arch, layer, epoch, seed) for seed in seeds
        ]
        assert m.mean == pytest.approx(np.mean(per_seed), abs=1e-9), m.label
        sd = np.std(per_seed, ddof=1) if len(seeds) > 1 else 0.0
        assert m.sd == pytest.approx(sd, abs=1e-9), m.label
    # a clustering that finds the superclasses and nothing else, scored over the whole split
    labels = digits_store.read(
        S.SAMPLES, columns=["subclass", "superclass"], filter=where(split="train")
    ).to_pandas()
    ceiling = next(m for m in found.measured if "superclass labels themselves" in m.label)
    assert ceiling.mean == pytest.approx(
        adjusted_mutual_info_score(labels.subclass, labels.superclass)
    )


def test_effects_are_per_seed_differences_and_decide_the_rule(digits_store):
    found = finding(digits_store, "study_digits_train")  # any of them gives the same
    assert (
        found == finding(digits_store, "study_digits") == finding(digits_store, "study_digits_all")
    )
    table = study.study_table(digits_store, "study_digits")
    effects = study.effects(table)
    # the arch items cut from the specs leave their contrasts out
    assert set(effects) == {
        "epochs (first -> last probe epoch)",
        "split (held-out -> train)",
        "map size (1x1 -> 4x4, GAP)",
        "pooling (GAP -> flatten, 4x4 map)",
        "scope (within superclasses -> whole split)",
    }
    pooling = effects["pooling (GAP -> flatten, 4x4 map)"]
    flat = study.cell_values(table, study.Cell("test", "flatten_4x4", True))
    gap = study.cell_values(table, study.Cell("test", "gap_4x4", True))
    np.testing.assert_allclose(pooling.to_numpy(), (flat - gap).to_numpy())
    reference = study.cell_values(table, study.Cell("train", "flatten_4x4", True))
    assert found.holds == (reference.mean() >= study.REFERENCE_AMI)
    assert f"{reference.mean():.3f}" in found.rule
    scope = effects["scope (within superclasses -> whole split)"]
    assert list(scope.index) == SEEDS[:1]  # the seeds both cells have
    lines = finding_lines(found)
    assert (
        lines[0].startswith("reproduction of issue #12") and len(lines) == len(found.measured) + 2
    )


def test_without_the_train_twin_the_reference_is_missing_and_does_not_hold(tmp_path, local_ray):
    store = EmbeddingStore(str(tmp_path / "store"))
    spec = reduced(EXAMPLES / "study_digits.yaml")
    spec["archs"] = [a for a in spec["archs"] if a["key"] == "quickstart"]
    spec["seeds"], spec["training"]["epochs"], spec["probe_epochs"] = [0], 1, [1]
    run_experiment(ExperimentSpec.from_dict(spec), store)
    found = finding(store, "study_digits")
    assert not found.holds and "not in this store" in found.rule
    assert [m.n for m in found.measured] == [1]


def test_runs_left_at_chance_are_not_compared():
    table = pd.DataFrame(
        {
            "split": "test",
            "scope": "superclass",
            "arch": ["quickstart"] * 3 + ["no_bn"] * 3,
            "seed": [0, 1, 2] * 2,
            "ami": [0.1, 0.2, 0.3, 0.5, 0.6, 0.9],
            "trained": [True, True, True, True, False, True],
            "first_epoch": False,
            "last_epoch": True,
        }
    )
    bn = study.effects(table)["BatchNorm (on -> off)"]
    assert list(bn.index) == [0, 2] and bn.to_numpy() == pytest.approx([0.4, 0.6])
    table.loc[table.arch == "no_bn", "trained"] = False
    assert "BatchNorm (on -> off)" not in study.effects(table)
