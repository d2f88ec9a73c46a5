"""Metrics: plain functions on label arrays and embeddings (NumPy in, floats out).

Clustering-vs-labels scores carry their ``sklearn.metrics`` names and behaviour;
representation measures follow the papers in ``RESEARCH.md``.
"""

from services.metrics.clustering import (
    SCORES_FROM_CONTINGENCY,
    adjusted_mutual_info_score,
    adjusted_rand_score,
    clustering_scores,
    completeness_score,
    contingency_matrix,
    expected_mutual_information,
    fowlkes_mallows_score,
    homogeneity_completeness_v_measure,
    homogeneity_score,
    mutual_info_score,
    normalized_mutual_info_score,
    purity_score,
    v_measure_score,
)
from services.metrics.intraclass import (
    global_max_pool,
    granulated_kendall,
    intraclass_c1,
    intraclass_c2,
    intraclass_c3,
    intraclass_c4,
)
from services.metrics.pairwise import pairwise_scores
from services.metrics.representation import (
    ClassStatistics,
    cdnv,
    cdnv_from_statistics,
    class_distance_matrix,
    class_means,
    cluster_and_linear_probe,
    linear_probe_accuracy,
    nc1,
    nc2,
    ncc_accuracy,
    nearest_class_mean,
    silhouette_score,
)

__all__ = [
    "SCORES_FROM_CONTINGENCY",
    "ClassStatistics",
    "adjusted_mutual_info_score",
    "adjusted_rand_score",
    "cdnv",
    "cdnv_from_statistics",
    "class_distance_matrix",
    "class_means",
    "cluster_and_linear_probe",
    "clustering_scores",
    "completeness_score",
    "contingency_matrix",
    "expected_mutual_information",
    "fowlkes_mallows_score",
    "global_max_pool",
    "granulated_kendall",
    "homogeneity_completeness_v_measure",
    "homogeneity_score",
    "intraclass_c1",
    "intraclass_c2",
    "intraclass_c3",
    "intraclass_c4",
    "linear_probe_accuracy",
    "mutual_info_score",
    "nc1",
    "nc2",
    "ncc_accuracy",
    "nearest_class_mean",
    "normalized_mutual_info_score",
    "pairwise_scores",
    "purity_score",
    "silhouette_score",
    "v_measure_score",
]
