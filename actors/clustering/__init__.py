"""Clustering estimators (scikit-learn contract) and their backends."""

from actors.clustering.backends import BACKENDS, METHODS, SUPPORTED, select_backend
from actors.clustering.distances import condensed_euclidean
from actors.clustering.estimators import (
    LINKAGES,
    AgglomerativeClustering,
    KMeans,
    cluster_for_ks,
    cut_linkage,
    l2_normalize,
)

__all__ = [
    "BACKENDS",
    "LINKAGES",
    "METHODS",
    "SUPPORTED",
    "AgglomerativeClustering",
    "KMeans",
    "cluster_for_ks",
    "condensed_euclidean",
    "cut_linkage",
    "l2_normalize",
    "select_backend",
]
