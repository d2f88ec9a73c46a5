"""Metrics: plain functions on label arrays and embeddings (NumPy in, floats out).

Representation similarity (linear CKA, mutual k-NN) lives in ``similarity``.

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
    nc1_from_statistics,
    nc2,
    nc2_from_means,
    ncc_accuracy,
    nearest_class_mean,
    silhouette_score,
)
from services.metrics.similarity import (
    CKAAccumulator,
    knn_overlap,
    linear_cka,
    mutual_knn_alignment,
    nearest_neighbours,
    streamed_neighbours,
)

__all__ = [
    "SCORES_FROM_CONTINGENCY",
    "CKAAccumulator",
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
    "knn_overlap",
    "linear_cka",
    "linear_probe_accuracy",
    "mutual_info_score",
    "mutual_knn_alignment",
    "nc1",
    "nc1_from_statistics",
    "nc2",
    "nc2_from_means",
    "ncc_accuracy",
    "nearest_class_mean",
    "nearest_neighbours",
    "streamed_neighbours",
    "normalized_mutual_info_score",
    "pairwise_scores",
    "purity_score",
    "silhouette_score",
    "v_measure_score",
]
