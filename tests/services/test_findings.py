"""The findings framework: measured summaries, rendering, and the spec's ``study`` field."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.pipeline import register_experiment
from jobs.spec import ExperimentSpec, SpecError
from services.findings import Finding, Measured, finding, finding_html, finding_lines

SPEC = {
    "name": "plain",
    "datasets": [{"name": "digits", "hierarchy": "coarse"}],
    "archs": ["small_cnn"],
    "seeds": [0],
}


def test_measured_is_mean_and_sample_sd():
    m = Measured.of("ami", [0.2, 0.4, 0.9])
    assert m.mean == pytest.approx(0.5)
    assert m.sd == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert m.n == 3
    assert Measured.of("one", [0.7]).sd == 0.0
    with pytest.raises(ValueError, match="no values"):
        Measured.of("none", [])


def test_finding_renders_claim_numbers_and_verdict():
    found = Finding(
        study="probing",
        paper="Nguyen & Kornblith (2024)",
        claim="shuffled <b> superclasses",
        measured=(Measured.of("natural", [0.1, 0.2]), Measured.of("shuffled", [0.6, 0.7])),
        holds=False,
        rule="shuffled mean above natural",
    )
    page = finding_html(found)
    assert "shuffled &lt;b&gt; superclasses" in page  # escaped
    assert "0.650" in page and "does not hold" in page
    lines = finding_lines(found)
    assert lines[1].startswith("  natural: 0.150 ± 0.071 (n=2)")
    assert "does not hold" in lines[-1]


def test_unknown_study_is_one_sentence():
    with pytest.raises(SpecError, match="unknown study 'nope'; choose one of"):
        ExperimentSpec.from_dict({**SPEC, "study": "nope"})


def test_an_experiment_without_study_has_no_finding(store):
    spec = ExperimentSpec.from_dict(SPEC)
    assert spec.study is None
    assert register_experiment(spec, store, fresh=False)
    assert finding(store, "plain") is None


# -- the ssl study (services/findings/ssl.py) on hand-written metrics rows --------------
def _write_ssl_rows(store, loss: str, ncc: dict) -> None:
    """runs rows with ``loss`` and representation rows ``{(metric, epoch, layer): per seed}``."""
    import pyarrow as pa

    from storage import schema as S

    base = {"experiment_id": "ssl-rows", "dataset_id": "d", "arch": "small_cnn"}
    runs = [
        {**base, "run_id": f"r{seed}", "loss": loss, "seed": seed, "epochs": 2}
        for seed in (0, 1, 2)
    ]
    store.write_unit(S.RUNS, "runs", pa.Table.from_pylist(runs, schema=S.RUNS_SCHEMA.remove(0)))
    metrics = [
        {
            **base,
            "run_id": f"r{seed}",
            "seed": seed,
            "epoch": epoch,
            "layer": layer,
            "split": "test",
            "scope": "all",
            "method": "representation",
            "overclustering_factor": 0,
            "n_clusters": 0,
            "metric": metric,
            "value": value,
        }
        for (metric, epoch, layer), values in ncc.items()
        for seed, value in enumerate(values)
    ]
    table = pa.Table.from_pylist(metrics, schema=S.METRICS_SCHEMA.remove(0))
    store.write_unit(S.METRICS, "metrics", table)


def _ncc_rows(fc2_end_subclass):
    rows = {}
    for level in ("subclass", "superclass"):
        rows[(f"ncc_{level}", 0, "fc2")] = [0.5, 0.55, 0.6]
        rows[(f"ncc_{level}", 2, "conv1")] = [0.4, 0.45, 0.5]
        rows[(f"ncc_{level}", 2, "fc2")] = [0.7, 0.8, 0.9]
    rows[("ncc_subclass", 2, "fc2")] = fc2_end_subclass
    return rows


@pytest.mark.parametrize(
    "loss, fc2_end, holds",
    [
        ("vicreg", [0.7, 0.8, 0.9], True),
        ("simclr", [0.7, 0.8, 0.58], False),  # one seed ends below where it started
        ("softmax_ce", [0.7, 0.8, 0.9], False),  # trained on labels: not the paper's setting
    ],
)
def test_ssl_finding_applies_its_rule_to_the_stored_rows(store, loss, fc2_end, holds):
    from services.findings import ssl

    _write_ssl_rows(store, loss, _ncc_rows(fc2_end))
    found = ssl.finding(store, "ssl-rows")
    assert found.holds is holds
    by_label = {m.label: m for m in found.measured}
    assert by_label["NCC subclass, fc2, epoch 0"].mean == pytest.approx(0.55)
    assert by_label["NCC subclass, fc2, epoch 2"].mean == pytest.approx(np.mean(fc2_end))
    assert by_label["NCC superclass, conv1, epoch 2"].sd == pytest.approx(0.05)
    assert loss in found.rule
