"""Metrics: plain functions on label arrays and embeddings (NumPy in, floats out)."""

from services.metrics.clustering import (
    CLUSTERING_SCORES,
    adjusted_mutual_info_score,
    adjusted_rand_score,
    contingency_matrix,
    normalized_mutual_info_score,
    purity_score,
)
from services.metrics.representation import class_means, ncc_accuracy

__all__ = [
    "CLUSTERING_SCORES",
    "adjusted_mutual_info_score",
    "adjusted_rand_score",
    "class_means",
    "contingency_matrix",
    "ncc_accuracy",
    "normalized_mutual_info_score",
    "purity_score",
]
