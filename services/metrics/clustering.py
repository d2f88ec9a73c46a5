"""Scores of a clustering against true labels, all from one contingency table.

Names, argument order and edge cases follow ``sklearn.metrics`` (tests check parity).
"""

from __future__ import annotations

import numpy as np
from scipy.special import comb

from services.metrics._validation import check_labelings


def contingency_matrix(labels_true, labels_pred) -> np.ndarray:
    """Counts ``C[i, j]`` of samples in class i and cluster j, int64 (n_classes, n_clusters)."""
    labels_true, labels_pred = check_labelings(labels_true, labels_pred)
    classes, class_idx = np.unique(labels_true, return_inverse=True)
    clusters, cluster_idx = np.unique(labels_pred, return_inverse=True)
    flat = class_idx.astype(np.int64) * len(clusters) + cluster_idx
    counts = np.bincount(flat, minlength=len(classes) * len(clusters))
    return counts.reshape(len(classes), len(clusters))


def purity_score(labels_true, labels_pred) -> float:
    """Accuracy of labelling each cluster with its most frequent true class."""
    table = contingency_matrix(labels_true, labels_pred)
    if table.sum() == 0:
        return 1.0
    return float(table.max(axis=0).sum() / table.sum())


def adjusted_rand_score(labels_true, labels_pred) -> float:
    """Rand index adjusted for chance (Hubert & Arabie), as ``sklearn.metrics``."""
    table = contingency_matrix(labels_true, labels_pred)
    n = int(table.sum())
    if n == 0:
        return 1.0
    sum_cells = float(comb(table, 2).sum())
    sum_rows = float(comb(table.sum(axis=1), 2).sum())
    sum_cols = float(comb(table.sum(axis=0), 2).sum())
    total = float(comb(n, 2))
    expected = sum_rows * sum_cols / total if total else 0.0
    maximum = (sum_rows + sum_cols) / 2
    if maximum == expected:  # both labelings trivial in the same way
        return 1.0
    return (sum_cells - expected) / (maximum - expected)


def adjusted_mutual_info_score(
    labels_true, labels_pred, *, average_method: str = "arithmetic"
) -> float:
    """Mutual information adjusted for chance, as ``sklearn.metrics.adjusted_mutual_info_score``."""
    from sklearn.metrics import adjusted_mutual_info_score as sk_ami

    labels_true, labels_pred = check_labelings(labels_true, labels_pred)
    return float(sk_ami(labels_true, labels_pred, average_method=average_method))


def normalized_mutual_info_score(
    labels_true, labels_pred, *, average_method: str = "arithmetic"
) -> float:
    """Mutual information normalised to [0, 1], as ``sklearn.metrics``."""
    from sklearn.metrics import normalized_mutual_info_score as sk_nmi

    labels_true, labels_pred = check_labelings(labels_true, labels_pred)
    return float(sk_nmi(labels_true, labels_pred, average_method=average_method))


CLUSTERING_SCORES = {
    "ami": adjusted_mutual_info_score,
    "purity": purity_score,
    "ari": adjusted_rand_score,
    "nmi": normalized_mutual_info_score,
}
