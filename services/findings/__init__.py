"""The papers' findings, checked on a stored study.

An experiment whose spec names a ``study`` (``study: probing`` ...) is a
reproduction: the study's module reads the experiment back from the store and
returns a :class:`Finding`: the paper's claim in one sentence, the numbers
measured (mean ± sd over seeds) and whether the paper's direction holds. The
report puts it first; ``stratalens show`` prints it.

A study is one module of this package with a function
``finding(store, experiment_id) -> Finding``, listed in :data:`STUDIES`.
"""

from __future__ import annotations

import html
import importlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from storage import schema as S
from storage.filters import where

if TYPE_CHECKING:
    from storage import EmbeddingStore

# study name -> module (in this package) whose ``finding`` checks it
STUDIES: dict[str, str] = {
    "probing": "probing",
    "clp": "clp",
    "ssl": "ssl",
    "intraclass": "intraclass",
    "digits": "digits",
}


@dataclass(frozen=True)
class Measured:
    """One measured quantity: mean and sample sd over ``n`` seeds (sd 0 for one seed)."""

    label: str
    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, label: str, values) -> Measured:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError(f"no values measured for {label!r}")
        sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
        return cls(label, float(values.mean()), sd, int(values.size))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.sd:.3f} (n={self.n})"


@dataclass(frozen=True)
class Finding:
    """A paper's claim and what the stored study measured of it."""

    study: str
    paper: str  # short citation, e.g. "Nguyen & Kornblith (2024)"
    claim: str  # the paper's finding, one sentence
    measured: tuple[Measured, ...]
    holds: bool  # does the measured direction agree with the claim?
    rule: str  # how ``holds`` was decided, one sentence

    @property
    def verdict(self) -> str:
        return "holds" if self.holds else "does not hold"


def study_of(store: EmbeddingStore, experiment_id: str) -> str | None:
    """The ``study`` named by the stored spec of ``experiment_id`` (None: not a reproduction)."""
    rows = store.read(S.EXPERIMENTS, columns=["spec"], filter=where(experiment_id=experiment_id))
    for spec_json in rows.column("spec").to_pylist():
        return json.loads(spec_json).get("study")
    return None


def finding(store: EmbeddingStore, experiment_id: str) -> Finding | None:
    """The :class:`Finding` of a stored reproduction, or None for other experiments."""
    study = study_of(store, experiment_id)
    if study is None:
        return None
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; choose one of {sorted(STUDIES)}")
    module = importlib.import_module(f"services.findings.{STUDIES[study]}")
    return module.finding(store, experiment_id)


def finding_html(found: Finding) -> str:
    """The report's section for ``found``: the claim, a table of numbers, the verdict."""
    rows = "".join(
        f"<tr><td>{html.escape(m.label)}</td><td>{m.mean:.3f}</td><td>{m.sd:.3f}</td>"
        f"<td>{m.n}</td></tr>"
        for m in found.measured
    )
    colour = "#1a7f37" if found.holds else "#b42318"
    return (
        f"<h2>Reproduction: {html.escape(found.paper)}</h2>"
        f"<p><b>The paper:</b> {html.escape(found.claim)}</p>"
        "<table><tr><th>measured</th><th>mean</th><th>sd</th><th>seeds</th></tr>"
        f"{rows}</table>"
        f'<p><b style="color:{colour}">The direction {found.verdict}</b>: '
        f"{html.escape(found.rule)}</p>"
    )


def finding_lines(found: Finding) -> list[str]:
    """``found`` as plain lines for the terminal."""
    lines = [f"reproduction of {found.paper} ({found.study}): {found.claim}"]
    lines += [f"  {m.label}: {m}" for m in found.measured]
    lines.append(f"  the direction {found.verdict}: {found.rule}")
    return lines
