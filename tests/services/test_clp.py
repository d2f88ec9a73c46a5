"""Cluster-and-Linear-Probe (Yang et al.) on hand-built embeddings, against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from actors.clustering import cluster_for_ks, l2_normalize
from services.findings.clp import msdr
from services.metrics import class_distance_matrix, clp_scores, cluster_and_linear_probe


def blobs(seed: int = 0, n: int = 30, spread: float = 1.0):
    """6 fine classes in 3 superclasses of 2, well separated; (X, X_test, superclass, fine)."""
    rng = np.random.RandomState(seed)
    fine = np.repeat(np.arange(6), n)
    centres = rng.randn(6, 8) * 6
    return (
        centres[fine] + spread * rng.randn(len(fine), 8),
        centres[fine] + spread * rng.randn(len(fine), 8),
        fine % 3,  # superclass = fine mod 3, the Coarse construction
        fine,
    )


def test_clp_scores_are_clp_and_a_fine_probe_on_the_same_features():
    X, X_test, coarse, fine = blobs(spread=4.0)  # overlapping: neither probe is perfect
    scores = clp_scores(X, coarse, fine, X_test, coarse, fine, method="ward")
    assert scores["clp_accuracy"] == cluster_and_linear_probe(
        X, coarse, {0: 2, 1: 2, 2: 2}, X_test, coarse, fine, method="ward"
    )
    direct = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    direct.fit(l2_normalize(X), fine)
    assert scores["linear_probe_fine"] == pytest.approx(direct.score(l2_normalize(X_test), fine))
    assert 0.2 < scores["clp_accuracy"] < 1.0 and 0.2 < scores["linear_probe_fine"] < 1.0


def test_clp_matches_a_by_hand_cluster_probe_match():
    X, X_test, coarse, fine = blobs(seed=3, spread=3.0)
    Xn, pseudo = l2_normalize(X), np.empty(len(X), dtype=np.int64)
    for s in range(3):
        members = np.flatnonzero(coarse == s)
        pseudo[members] = cluster_for_ks(Xn[members], "kmeans", [2])[2] + 2 * s
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Xn, pseudo)
    predicted = probe.predict(l2_normalize(X_test))
    correct = 0
    for s in range(3):  # try both namings of the superclass's two clusters
        members = coarse == s
        fines = np.unique(fine[members])
        correct += max(
            sum(
                int(((predicted == 2 * s + c) & (fine == fines[c ^ flip]) & members).sum())
                for c in (0, 1)
            )
            for flip in (0, 1)
        )
    assert cluster_and_linear_probe(X, coarse, [2, 2, 2], X_test, coarse, fine) == pytest.approx(
        correct / len(X_test)
    )


def test_a_prediction_into_another_superclasss_cluster_is_wrong():
    X, _, coarse, fine = blobs(seed=1)
    # test samples of superclass 0 whose fine class 3 looks like fine class 1 (superclass 1)
    X_test = np.concatenate([X[fine == 0], X[fine == 1]])
    fine_test = np.repeat([0, 3], 30)
    coarse_test = np.zeros(60, dtype=np.int64)
    accuracy = cluster_and_linear_probe(X, coarse, [2, 2, 2], X_test, coarse_test, fine_test)
    assert accuracy == pytest.approx(0.5)  # the look-alikes land in superclass 1's clusters


def test_clp_recovers_separable_fine_classes():
    X, X_test, coarse, fine = blobs()
    scores = clp_scores(X, coarse, fine, X_test, coarse, fine)
    assert scores == {"clp_accuracy": 1.0, "linear_probe_fine": 1.0}


def test_msdr_from_distance_rows():
    import pandas as pd

    X, _, coarse, fine = blobs()
    classes, D = class_distance_matrix(X, fine)
    rows = pd.DataFrame(
        [
            {"scope": f"{a},{b}", "value": D[i, j]}
            for i, a in enumerate(classes)
            for j, b in enumerate(classes)
        ]
    )
    superclass_of = {c: c % 3 for c in classes}
    same = [(i, j) for i in range(6) for j in range(6) if i != j and i % 3 == j % 3]
    expected = np.mean([D[i, j] for i, j in same]) / np.mean(np.diag(D))
    assert msdr(rows, superclass_of) == pytest.approx(expected)
    assert expected > 5  # separated fine classes: far from collapse (1)
