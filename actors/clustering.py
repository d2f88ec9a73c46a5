"""Clustering estimators with one contract (scikit-learn style).

``AgglomerativeClustering`` fits one dendrogram and cuts it for any number of
clusters (:meth:`AgglomerativeClustering.labels_for`); ``KMeans`` wraps
scikit-learn's k-means++. Both validate their input once, at ``fit``.
"""

from __future__ import annotations

import numpy as np

LINKAGES = ("ward", "average", "complete", "single")
METHODS = ("ward", "kmeans", "average", "complete", "single")
BACKENDS = ("auto", "scipy", "sklearn")


def select_backend(name: str, *, method: str) -> str:
    """Resolve ``auto`` to the backend that runs ``method`` here.

    CPU backends only for now: SciPy for the linkages, scikit-learn for k-means.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown clustering backend {name!r}; choose one of {list(BACKENDS)}")
    if name != "auto":
        return name
    return "sklearn" if method == "kmeans" else "scipy"


def _check_input(X, n_clusters: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X should be a 2-d array (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or Inf; clean the embeddings before clustering")
    if not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} should be a positive integer")
    if X.shape[0] < n_clusters:
        raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={n_clusters}")
    return X


def cut_linkage(linkage_matrix: np.ndarray, n_clusters: int) -> np.ndarray:
    """Flat labels (int32, n) from a SciPy linkage matrix, keeping ``n - n_clusters`` merges.

    Exact for any monotone linkage; labels are numbered by first appearance.
    """
    n = linkage_matrix.shape[0] + 1
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}")
    parent = np.arange(2 * n - 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step in range(n - n_clusters):
        a, b = int(linkage_matrix[step, 0]), int(linkage_matrix[step, 1])
        parent[root(a)] = n + step
        parent[root(b)] = n + step
    roots = np.array([root(i) for i in range(n)])
    _, labels = np.unique(roots, return_inverse=True)
    # renumber by first appearance so labels do not depend on merge ids
    order = {}
    return np.array([order.setdefault(x, len(order)) for x in labels], dtype=np.int32)


class AgglomerativeClustering:
    """Hierarchical clustering; one fit serves every number of clusters.

    Parameters
    ----------
    n_clusters : int, default=2
    linkage : {"ward", "average", "complete", "single"}, default="ward"
    backend : {"auto", "scipy"}, default="auto"

    Attributes
    ----------
    linkage_matrix_ : ndarray of shape (n_samples - 1, 4)
        SciPy-format merge history.
    labels_ : ndarray of shape (n_samples,), int32
    """

    def __init__(self, n_clusters: int = 2, *, linkage: str = "ward", backend: str = "auto"):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.backend = backend

    def fit(self, X) -> AgglomerativeClustering:
        if self.linkage not in LINKAGES:
            raise ValueError(f"unknown linkage {self.linkage!r}; choose one of {list(LINKAGES)}")
        backend = select_backend(self.backend, method=self.linkage)
        if backend != "scipy":
            raise ValueError(
                f"backend {backend!r} does not run {self.linkage!r} linkage; use 'scipy'"
            )
        X = _check_input(X, self.n_clusters)
        from scipy.cluster.hierarchy import linkage

        self.linkage_matrix_ = linkage(X.astype(np.float64, copy=False), method=self.linkage)
        self.labels_ = cut_linkage(self.linkage_matrix_, self.n_clusters)
        return self

    def fit_predict(self, X) -> np.ndarray:
        return self.fit(X).labels_

    def labels_for(self, n_clusters: int) -> np.ndarray:
        """Labels for ``n_clusters`` from the fitted dendrogram (no re-clustering)."""
        return cut_linkage(self.linkage_matrix_, n_clusters)


class KMeans:
    """k-means++ (scikit-learn), seeded and deterministic for a given ``random_state``.

    Parameters
    ----------
    n_clusters : int, default=8
    backend : {"auto", "sklearn"}, default="auto"
    random_state : int, default=0
    n_init : int, default=4
        Restarts; the run with the lowest inertia wins.
    """

    def __init__(
        self, n_clusters: int = 8, *, backend: str = "auto", random_state: int = 0, n_init: int = 4
    ):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.n_init = n_init

    def fit(self, X) -> KMeans:
        backend = select_backend(self.backend, method="kmeans")
        if backend != "sklearn":
            raise ValueError(f"backend {backend!r} does not run k-means; use 'sklearn'")
        X = _check_input(X, self.n_clusters)
        from sklearn.cluster import KMeans as SkKMeans

        model = SkKMeans(self.n_clusters, n_init=self.n_init, random_state=self.random_state).fit(X)
        self.labels_ = model.labels_.astype(np.int32)
        self.cluster_centers_ = model.cluster_centers_
        self.inertia_ = float(model.inertia_)
        return self

    def fit_predict(self, X) -> np.ndarray:
        return self.fit(X).labels_


def cluster_for_ks(
    X, method: str, ks: list[int], *, random_state: int = 0
) -> dict[int, np.ndarray]:
    """Labels of ``X`` for every k in ``ks``: one dendrogram cut per k, or one k-means fit per k."""
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {list(METHODS)}")
    if method == "kmeans":
        return {k: KMeans(k, random_state=random_state).fit_predict(X) for k in ks}
    model = AgglomerativeClustering(max(ks), linkage=method).fit(X)
    return {k: model.labels_for(k) for k in ks}


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero), float32 (n, d)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, eps)
