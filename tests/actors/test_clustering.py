import numpy as np
import pytest
from sklearn import cluster as skc
from sklearn.metrics import adjusted_rand_score

from actors.clustering import (
    AgglomerativeClustering,
    KMeans,
    cluster_for_ks,
    cut_linkage,
    l2_normalize,
    select_backend,
)


def blobs(n=200, d=8, centres=5, seed=0):
    rng = np.random.RandomState(seed)
    means = rng.randn(centres, d) * 4
    return means[rng.randint(centres, size=n)] + rng.randn(n, d)


@pytest.mark.parametrize("linkage", ["ward", "average", "complete", "single"])
@pytest.mark.parametrize("n, d", [(50, 3), (300, 16)])
def test_every_k_from_one_fit_matches_sklearn(linkage, n, d):
    X = np.random.RandomState(n + d).randn(n, d)
    model = AgglomerativeClustering(2, linkage=linkage).fit(X)
    for k in (1, 2, 7, n // 3, n):
        expected = skc.AgglomerativeClustering(k, linkage=linkage).fit_predict(X)
        assert adjusted_rand_score(expected, model.labels_for(k)) == 1.0
        assert len(np.unique(model.labels_for(k))) == k


def test_cut_of_a_hand_built_dendrogram():
    # merges: (0,1) -> 4, (2,3) -> 5, (4,5) -> 6
    Z = np.array([[0, 1, 1.0, 2], [2, 3, 2.0, 2], [4, 5, 3.0, 4]])
    np.testing.assert_array_equal(cut_linkage(Z, 2), [0, 0, 1, 1])
    np.testing.assert_array_equal(cut_linkage(Z, 3), [0, 0, 1, 2])
    np.testing.assert_array_equal(cut_linkage(Z, 1), [0, 0, 0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_is_seeded_and_finds_clear_blobs(dtype):
    X = blobs().astype(dtype)
    a = KMeans(5, random_state=3).fit_predict(X)
    b = KMeans(5, random_state=3).fit_predict(X)
    np.testing.assert_array_equal(a, b)
    truth = AgglomerativeClustering(5).fit_predict(X)
    assert adjusted_rand_score(truth, a) > 0.95


def test_cluster_for_ks_is_deterministic():
    X = blobs()
    first = cluster_for_ks(X, "ward", [5, 10])
    second = cluster_for_ks(X, "ward", [5, 10])
    assert all(np.array_equal(first[k], second[k]) for k in (5, 10))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: AgglomerativeClustering(10).fit(np.zeros((5, 2))),
            "n_samples=5 should be >= n_clusters=10",
        ),
        (lambda: AgglomerativeClustering(2).fit(np.array([[0.0, np.nan], [1, 1]])), "NaN or Inf"),
        (
            lambda: AgglomerativeClustering(2, linkage="median").fit(np.zeros((5, 2))),
            "unknown linkage",
        ),
        (lambda: KMeans(0).fit(np.zeros((5, 2))), "positive integer"),
        (lambda: KMeans(2).fit(np.zeros(5)), "2-d array"),
        (lambda: cluster_for_ks(np.zeros((5, 2)), "dbscan", [2]), "unknown clustering method"),
        (lambda: select_backend("cuml-nope", method="ward"), "unknown clustering backend"),
    ],
)
def test_bad_input_raises_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_l2_normalize():
    X = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(X), [[0.6, 0.8], [0.0, 0.0]])
