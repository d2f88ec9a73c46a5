"""Measures of a representation against class labels.

Class-mean based measures (NCC accuracy, CDNV, NC1, NC2, class distances) are
computed from :class:`ClassStatistics`, which accumulates per-class counts,
sums and second moments batch by batch, so a layer larger than memory is read
once.
"""

from __future__ import annotations

import numpy as np

from services.metrics._validation import check_embeddings


class ClassStatistics:
    """Per-class count, sum, squared norm and (optionally) scatter, accumulated in one pass.

    Parameters
    ----------
    track_scatter : bool, default=False
        Also accumulate the (d, d) second moment of all samples, from which the
        within-class scatter NC1 needs follows (one (d, d) array, whatever the
        number of classes).
    """

    def __init__(self, *, track_scatter: bool = False):
        self.track_scatter = track_scatter
        self._index: dict = {}  # class id -> row of the arrays below
        self._count = np.zeros(0, dtype=np.int64)
        self._sum: np.ndarray | None = None
        self._sq = np.zeros(0)
        self._outer: np.ndarray | None = None

    def update(self, X, y) -> ClassStatistics:
        """Add one batch: X (n, d) any float dtype, y (n,) class ids."""
        X, y = check_embeddings(X, y)
        classes, inverse = np.unique(y, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(len(classes)))
        sorted_X = X[order]
        rows = self._rows(classes.tolist(), X.shape[1])
        self._count[rows] += np.bincount(inverse, minlength=len(classes))
        self._sum[rows] += np.add.reduceat(sorted_X, starts, axis=0)
        self._sq[rows] += np.bincount(
            inverse, weights=np.einsum("ij,ij->i", X, X), minlength=len(classes)
        )
        if self.track_scatter:
            self._outer += X.T @ X
        return self

    def _rows(self, classes: list, dim: int) -> np.ndarray:
        new = [c for c in classes if c not in self._index]
        if self._sum is None:
            self._sum = np.zeros((0, dim))
            self._outer = np.zeros((dim, dim)) if self.track_scatter else None
        elif dim != self._sum.shape[1]:
            raise ValueError(
                f"batch has {dim} features but earlier batches had {self._sum.shape[1]}"
            )
        if new:
            for c in new:
                self._index[c] = len(self._index)
            grow = len(new)
            self._count = np.concatenate([self._count, np.zeros(grow, np.int64)])
            self._sum = np.concatenate([self._sum, np.zeros((grow, dim))])
            self._sq = np.concatenate([self._sq, np.zeros(grow)])
        return np.array([self._index[c] for c in classes])

    def _sorted_rows(self) -> np.ndarray:
        return np.array([self._index[c] for c in self.classes], dtype=np.int64)

    @property
    def classes(self) -> np.ndarray:
        return np.array(sorted(self._index))

    @property
    def counts(self) -> np.ndarray:
        return self._count[self._sorted_rows()]

    @property
    def means(self) -> np.ndarray:
        """Class means, float64 (n_classes, d), in ``classes`` order."""
        rows = self._sorted_rows()
        return self._sum[rows] / self._count[rows, None]

    @property
    def mean_sq_norms(self) -> np.ndarray:
        rows = self._sorted_rows()
        return self._sq[rows] / self._count[rows]

    @property
    def variances(self) -> np.ndarray:
        """Per-class mean squared distance to the class mean, float64 (n_classes,)."""
        means = self.means
        return np.maximum(self.mean_sq_norms - np.einsum("ij,ij->i", means, means), 0.0)

    def within_scatter(self) -> np.ndarray:
        """S_W = (1/N) sum_c sum_{x in c} (x - mu_c)(x - mu_c)^T, float64 (d, d)."""
        if not self.track_scatter:
            raise ValueError("within_scatter needs ClassStatistics(track_scatter=True)")
        means, counts = self.means, self.counts
        total = self._outer - (means.T * counts) @ means
        return total / counts.sum()


def class_means(X, y) -> tuple[np.ndarray, np.ndarray]:
    """Sorted class ids and their mean vectors, float64 (n_classes, d)."""
    stats = ClassStatistics().update(X, y)
    return stats.classes, stats.means


def nearest_class_mean(X, classes: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The class whose mean is nearest (Euclidean) to each row of X."""
    X = np.asarray(X, dtype=np.float64)
    distances = (X**2).sum(1)[:, None] - 2 * X @ means.T + (means**2).sum(1)[None, :]
    return classes[distances.argmin(axis=1)]


def ncc_accuracy(X_train, y_train, X_test=None, y_test=None) -> float:
    """Accuracy of the nearest-class-centre classifier built from the training means.

    Scores ``(X_test, y_test)`` when given, else the training set itself.
    """
    classes, means = class_means(X_train, y_train)
    if X_test is None:
        X_test, y_test = X_train, y_train
    X_test, y_test = check_embeddings(X_test, y_test, name="X_test")
    if X_test.shape[1] != means.shape[1]:
        raise ValueError(
            f"X_test has {X_test.shape[1]} features but X_train has {means.shape[1]}; "
            "use embeddings of the same layer"
        )
    return float((nearest_class_mean(X_test, classes, means) == y_test).mean())


def cdnv(X, y) -> float:
    """Class-distance normalised variance: mean over i != j of
    (Var_i + Var_j) / (2 ||mu_i - mu_j||^2)."""
    return cdnv_from_statistics(ClassStatistics().update(X, y))


def cdnv_from_statistics(stats: ClassStatistics) -> float:
    means, variances = stats.means, stats.variances
    if len(means) < 2:
        raise ValueError("CDNV needs at least 2 classes")
    gaps = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    off = ~np.eye(len(means), dtype=bool)
    ratios = (variances[:, None] + variances[None, :])[off] / (2 * gaps[off])
    return float(ratios.mean())


def nc1(X, y) -> float:
    """Within-class variability collapse: tr(S_W S_B^+) / C (Papyan et al.)."""
    return nc1_from_statistics(ClassStatistics(track_scatter=True).update(X, y))


def nc1_from_statistics(stats: ClassStatistics) -> float:
    """NC1 from one-pass statistics gathered with ``track_scatter=True``."""
    means = stats.means
    centred = means - means.mean(axis=0)
    between = centred.T @ centred / len(means)
    return float(np.trace(stats.within_scatter() @ np.linalg.pinv(between)) / len(means))


def nc2(X, y) -> float:
    """Distance of the centred class means' Gram matrix from a simplex ETF's (0 = collapse)."""
    return nc2_from_means(class_means(X, y)[1])


def nc2_from_means(means: np.ndarray) -> float:
    """NC2 of class means, float (n_classes, d)."""
    n_classes = len(means)
    if n_classes < 2:
        raise ValueError("NC2 needs at least 2 classes")
    M = means - means.mean(axis=0)
    gram = M @ M.T
    etf = (np.eye(n_classes) - np.ones((n_classes, n_classes)) / n_classes) / np.sqrt(n_classes - 1)
    return float(np.linalg.norm(gram / np.linalg.norm(gram) - etf))


def class_distance_matrix(X, y) -> tuple[np.ndarray, np.ndarray]:
    """D[i, j] = mean squared distance between samples of class i and class j.

    Returns the sorted classes and D, float64 (n_classes, n_classes).
    """
    stats = ClassStatistics().update(X, y)
    means, sq = stats.means, stats.mean_sq_norms
    return stats.classes, sq[:, None] + sq[None, :] - 2 * means @ means.T


def silhouette_score(X, labels, *, metric: str = "cosine") -> float:
    """Mean silhouette coefficient (cosine distances by default), as ``sklearn.metrics``."""
    from sklearn.metrics import silhouette_score as sk_silhouette

    X, labels = check_embeddings(X, labels)
    return float(sk_silhouette(X, labels, metric=metric))


def linear_probe_accuracy(
    X_train, y_train, X_test, y_test, *, C: float = 1.0, max_iter: int = 1000
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, y_train = check_embeddings(X_train, y_train)
    X_test, y_test = check_embeddings(X_test, y_test, name="X_test")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    return float(probe.fit(X_train, y_train).score(X_test, y_test))


def cluster_and_linear_probe(
    X_train,
    superclass_train,
    n_fine_per_superclass,
    X_test,
    superclass_test,
    fine_test,
    *,
    method: str = "kmeans",
    random_state: int = 0,
) -> float:
    """Cluster-and-Linear-Probe (Yang et al.): fine accuracy learnt from coarse labels only.

    Each training superclass s is clustered (L2-normalised) into
    ``n_fine_per_superclass[s]`` clusters; a linear probe learns the cluster ids
    of all superclasses at once; within each test superclass its predictions
    into that superclass's own clusters are matched to the true fine labels by
    the Hungarian algorithm (cluster ids carry no names), and the accuracy of
    the matched predictions is returned. A test sample predicted into another
    superclass's cluster counts as wrong.
    """
    from actors.clustering import cluster_for_ks, l2_normalize

    X_train, superclass_train = check_embeddings(X_train, superclass_train)
    X_test, fine_test = check_embeddings(X_test, fine_test, name="X_test")
    superclass_test = np.asarray(superclass_test)
    pseudo = np.empty(len(X_train), dtype=np.int64)
    own_clusters: dict = {}  # superclass -> its cluster ids in ``pseudo``
    Xn = l2_normalize(X_train)
    for s in np.unique(superclass_train):
        members = np.flatnonzero(superclass_train == s)
        k = int(n_fine_per_superclass[s])
        offset = sum(len(ids) for ids in own_clusters.values())
        pseudo[members] = (
            cluster_for_ks(Xn[members], method, [k], random_state=random_state)[k] + offset
        )
        own_clusters[s] = np.arange(offset, offset + k)
    predicted = _linear_probe(Xn, pseudo).predict(l2_normalize(X_test))
    correct = 0
    for s in np.unique(superclass_test):
        members = np.flatnonzero(superclass_test == s)
        correct += _matched_correct(predicted[members], fine_test[members], own_clusters.get(s))
    return correct / len(X_test)


def _matched_correct(predicted: np.ndarray, fine: np.ndarray, clusters) -> int:
    """Samples right under the best one-to-one naming of ``clusters`` by fine labels."""
    from scipy.optimize import linear_sum_assignment

    if clusters is None or not len(clusters):
        return 0
    inside = np.isin(predicted, clusters)
    fine_ids, fine_codes = np.unique(fine, return_inverse=True)
    table = np.zeros((len(clusters), len(fine_ids)), dtype=np.int64)
    np.add.at(table, (predicted[inside] - clusters[0], fine_codes[inside]), 1)
    rows, cols = linear_sum_assignment(-table)
    return int(table[rows, cols].sum())


def clp_scores(
    X_train,
    superclass_train,
    fine_train,
    X_test,
    superclass_test,
    fine_test,
    *,
    method: str = "kmeans",
    random_state: int = 0,
) -> dict[str, float]:
    """CLP accuracy next to a linear probe trained on the fine labels themselves.

    Both probes are the same classifier (standardised logistic regression) on the
    same L2-normalised features, so
    the gap between them is what clustering loses. Each superclass is
    clustered into as many clusters as it has fine classes in the training
    split. Returns ``{"clp_accuracy", "linear_probe_fine"}``, both on the test
    split's fine labels.
    """
    from actors.clustering import l2_normalize

    X_train, fine_train = check_embeddings(X_train, fine_train)
    superclass_train = np.asarray(superclass_train)
    n_fine = {
        s: len(np.unique(fine_train[superclass_train == s])) for s in np.unique(superclass_train)
    }
    clp = cluster_and_linear_probe(
        X_train,
        superclass_train,
        n_fine,
        X_test,
        superclass_test,
        fine_test,
        method=method,
        random_state=random_state,
    )
    X_test, fine_test = check_embeddings(X_test, fine_test, name="X_test")
    probe = _linear_probe(l2_normalize(X_train), fine_train)
    return {
        "clp_accuracy": clp,
        "linear_probe_fine": float(probe.score(l2_normalize(X_test), fine_test)),
    }


def _linear_probe(X, y):
    """The probe both CLP and its fine-label baseline train: multinomial logistic regression on
    standardised features, as :func:`linear_probe_accuracy` (on unit-norm rows without the
    scaler, C = 1 underfits: 0.89 instead of 0.98 on digits' conv2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
