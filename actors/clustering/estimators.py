"""Clustering estimators with one contract (scikit-learn style).

``AgglomerativeClustering`` fits one dendrogram and cuts it for any number of
clusters (:meth:`AgglomerativeClustering.labels_for`); ``KMeans`` runs
k-means++. Both validate their input once, at ``fit``, and give the same
labels whatever backend runs them (ties aside).
"""

from __future__ import annotations

import numpy as np

from actors.clustering.backends import cuda_available, select_backend
from actors.clustering.distances import condensed_bytes, condensed_euclidean
from actors.clustering.memory import available_memory_bytes

LINKAGES = ("ward", "average", "complete", "single")
# The in-place NN-chain holds the O(n^2) float64 distances once. It runs while they take
# at most this share of the memory available at fit time; past it, Ward and single
# linkage switch to fastcluster's O(n d) vector method and the others raise. At
# n = 50,000, d = 512 (9.3 GiB of distances) the in-place fit took 107 s here, while the
# vector method took 40 s at n = 10,000 already (its time grows as n^2 too).
CONDENSED_MEMORY_FRACTION = 0.5
# The budget where available memory cannot be read (not Linux).
FALLBACK_CONDENSED_BUDGET_BYTES = 8 << 30


def _check_input(X, n_clusters: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X should be a 2-d array (n_samples, n_features), got shape {X.shape}")
    if X.shape[1] == 0:
        raise ValueError(f"X has no features (shape {X.shape}); pass embeddings of dimension >= 1")
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
    _, first = np.unique(roots, return_index=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first)] = np.arange(len(first))  # number clusters by first appearance
    return rank[np.unique(roots, return_inverse=True)[1]]


def linkage_matrix(X: np.ndarray, method: str, backend: str, device=None) -> np.ndarray:
    """The SciPy-format dendrogram of X for ``method`` on ``backend`` (scipy or torch)."""
    if backend == "torch":
        from actors.clustering.torch_ward import ward_linkage

        return ward_linkage(X, device=device or ("cuda" if cuda_available() else "cpu"))
    needed, budget = condensed_bytes(len(X)), condensed_memory_budget()
    if needed > budget:
        if method in ("ward", "single"):
            import fastcluster

            return fastcluster.linkage_vector(np.asarray(X, dtype=np.float64), method=method)
        raise MemoryError(
            f"{method} linkage of {len(X)} points needs {needed / 2**30:.1f} GiB of pairwise "
            f"distances, more than the {budget / 2**30:.1f} GiB this fit may use "
            f"({CONDENSED_MEMORY_FRACTION:.0%} of the memory available); use ward or single "
            "linkage (O(n d) memory past that size) or cluster fewer points"
        )
    from actors.clustering.nn_chain import nn_chain_linkage

    # SciPy's algorithm, overwriting the one copy of the distances
    return nn_chain_linkage(condensed_euclidean(X), len(X), method)


def condensed_memory_budget() -> int:
    """Bytes the O(n^2) distances of one fit may take (see ``CONDENSED_MEMORY_FRACTION``)."""
    available = available_memory_bytes()
    if available is None:
        return FALLBACK_CONDENSED_BUDGET_BYTES
    return int(available * CONDENSED_MEMORY_FRACTION)


class AgglomerativeClustering:
    """Hierarchical clustering; one fit serves every number of clusters.

    Parameters
    ----------
    n_clusters : int, default=2
    linkage : {"ward", "average", "complete", "single"}, default="ward"
    backend : {"auto", "scipy", "torch", "cuml"}, default="auto"
        ``scipy``: distances by tiled float64 GEMM, then SciPy's NN-chain algorithm
        (compiled, in place); ``torch``: exact RNN Ward on CUDA or CPU; ``cuml``: single
        linkage on the GPU (labels only: each k is a new fit).
    device : str, optional
        torch device for the ``torch`` backend.

    Attributes
    ----------
    linkage_matrix_ : ndarray of shape (n_samples - 1, 4)
        SciPy-format merge history (not set by ``cuml``).
    labels_ : ndarray of shape (n_samples,), int32
    backend_ : str
        The backend that ran.
    """

    def __init__(
        self, n_clusters: int = 2, *, linkage: str = "ward", backend: str = "auto", device=None
    ):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.backend = backend
        self.device = device

    def fit(self, X) -> AgglomerativeClustering:
        if self.linkage not in LINKAGES:
            raise ValueError(f"unknown linkage {self.linkage!r}; choose one of {list(LINKAGES)}")
        self.backend_ = select_backend(self.backend, method=self.linkage)
        X = _check_input(X, self.n_clusters)
        if self.backend_ == "cuml":
            self._X = X
            self.labels_ = self._cuml_labels(self.n_clusters)
            return self
        self.linkage_matrix_ = linkage_matrix(X, self.linkage, self.backend_, self.device)
        self.labels_ = cut_linkage(self.linkage_matrix_, self.n_clusters)
        return self

    def fit_predict(self, X) -> np.ndarray:
        return self.fit(X).labels_

    def labels_for(self, n_clusters: int) -> np.ndarray:
        """Labels for ``n_clusters`` from the fitted dendrogram (no re-clustering)."""
        if self.backend_ == "cuml":
            return self._cuml_labels(n_clusters)
        return cut_linkage(self.linkage_matrix_, n_clusters)

    def _cuml_labels(self, n_clusters: int) -> np.ndarray:  # pragma: no cover - needs RAPIDS
        from cuml.cluster import AgglomerativeClustering as CumlAgglomerative

        model = CumlAgglomerative(n_clusters=n_clusters, linkage="single").fit(self._X)
        return np.asarray(model.labels_, dtype=np.int32)


class KMeans:
    """k-means++ (scikit-learn on CPU, cuML on GPU), seeded and deterministic per ``random_state``.

    Parameters
    ----------
    n_clusters : int, default=8
    backend : {"auto", "sklearn", "cuml"}, default="auto"
    random_state : int, default=0
    n_init : int, default=4
        Restarts from different k-means++ seeds; the run with the lowest inertia wins.
    """

    def __init__(
        self, n_clusters: int = 8, *, backend: str = "auto", random_state: int = 0, n_init: int = 4
    ):
        self.n_clusters = n_clusters
        self.backend = backend
        self.random_state = random_state
        self.n_init = n_init

    def fit(self, X) -> KMeans:
        self.backend_ = select_backend(self.backend, method="kmeans")
        X = _check_input(X, self.n_clusters)
        if self.backend_ == "cuml":  # pragma: no cover - needs RAPIDS
            from cuml.cluster import KMeans as Estimator
        else:
            from sklearn.cluster import KMeans as Estimator
        model = Estimator(
            n_clusters=self.n_clusters, n_init=self.n_init, random_state=self.random_state
        ).fit(X)
        self.labels_ = np.asarray(model.labels_, dtype=np.int32)
        self.cluster_centers_ = np.asarray(model.cluster_centers_)
        self.inertia_ = float(model.inertia_)
        return self

    def fit_predict(self, X) -> np.ndarray:
        return self.fit(X).labels_


def cluster_for_ks(
    X, method: str, ks: list[int], *, random_state: int = 0, backend: str = "auto"
) -> dict[int, np.ndarray]:
    """Labels of ``X`` for every k in ``ks``: one dendrogram cut per k, or one k-means fit per k."""
    select_backend(backend, method=method)  # validates method and backend together
    if method == "kmeans":
        return {k: KMeans(k, random_state=random_state, backend=backend).fit_predict(X) for k in ks}
    model = AgglomerativeClustering(max(ks), linkage=method, backend=backend).fit(X)
    return {k: model.labels_for(k) for k in ks}


def l2_normalize(X, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero), float32 (n, d)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, eps)
