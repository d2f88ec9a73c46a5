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
