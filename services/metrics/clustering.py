"""Scores of a clustering against true labels, all from one contingency table.

Names, signatures, defaults and edge cases follow ``sklearn.metrics``: scikit-learn's
own test module for them runs against these functions
(``tests/services/test_sklearn_contract.py``). The expected mutual information of
AMI is exact but fast: equal label sizes are grouped, and for each pair of
sizes a compiled loop sums the hypergeometric terms outward from the mode
until the rest provably cannot move the sum (see ``services.metrics._emi``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log
from numbers import Real

import numpy as np
from scipy import sparse as sp

from services.metrics._validation import as_numpy, check_labelings

# up to this many cells per sample a dense bincount finds the non-zero cells faster than
# np.unique; beyond it, scanning the mostly empty table costs more than sorting the samples
DENSE_CELLS_PER_SAMPLE = 1
# integer labels spanning at most this many values per sample are coded by counting, not sorting
COUNTED_SPAN_PER_SAMPLE = 4
AVERAGE_METHODS = ("arithmetic", "geometric", "min", "max")
_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class Contingency:
    """The non-zero cells and the marginals of a contingency table.

    ``rows``/``cols`` index the sorted unique labels of each labeling; ``counts``
    are the cell counts (int64), ``row_sums``/``col_sums`` the class and cluster sizes.
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    row_sums: np.ndarray
    col_sums: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.row_sums.sum())

    def dense(self) -> np.ndarray:
        table = np.zeros((len(self.row_sums), len(self.col_sums)), dtype=np.int64)
        table[self.rows, self.cols] = self.counts
        return table

    @classmethod
    def from_codes(cls, a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> Contingency:
        """From labelings already coded 0..n_a-1 and 0..n_b-1."""
        flat = a.astype(np.int64) * n_b + b
        if n_a * n_b <= DENSE_CELLS_PER_SAMPLE * max(len(flat), 1):
            counts = np.bincount(flat, minlength=n_a * n_b)
            cells = np.flatnonzero(counts)
            counts = counts[cells]
        else:
            cells, counts = np.unique(flat, return_counts=True)
        return cls.from_cells(cells // n_b, cells % n_b, counts, n_a, n_b)

    @classmethod
    def from_matrix(cls, matrix) -> Contingency:
        """From a table of counts given whole: a 2-d array or a SciPy sparse matrix."""
        if sp.issparse(matrix):
            coo = sp.coo_matrix(matrix)
            coo.sum_duplicates()
            rows, cols, counts, shape = coo.row, coo.col, coo.data, coo.shape
        else:
            matrix = as_numpy(matrix)
            if matrix.ndim != 2:
                raise ValueError(
                    f"contingency should be a 2-d table of counts, got shape {matrix.shape}"
                )
            rows, cols = np.nonzero(matrix)
            counts, shape = matrix[rows, cols], matrix.shape
        counts = np.asarray(counts)
        if counts.dtype.kind not in "iub" and not (
            np.isfinite(counts).all() and (counts == np.round(counts)).all()
        ):
            raise ValueError("contingency holds non-integer counts; pass counts of samples")
        if (counts < 0).any():
            raise ValueError("contingency holds negative counts; pass counts of samples")
        keep = counts != 0
        return cls.from_cells(rows[keep], cols[keep], counts[keep], shape[0], shape[1])

    @classmethod
    def from_cells(cls, rows, cols, counts, n_a: int, n_b: int) -> Contingency:
        counts = np.asarray(counts, dtype=np.int64)
        return cls(
            rows=np.asarray(rows),
            cols=np.asarray(cols),
            counts=counts,
            row_sums=np.bincount(rows, weights=counts, minlength=n_a).astype(np.int64),
            col_sums=np.bincount(cols, weights=counts, minlength=n_b).astype(np.int64),
        )


def encode(labels) -> tuple[np.ndarray, int]:
    """Labels of any hashable dtype as codes 0..n_labels-1 (sorted order), and n_labels."""
    labels = as_numpy(labels).ravel()
    if labels.dtype.kind in "iu" and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if high - low < COUNTED_SPAN_PER_SAMPLE * labels.size and max(-low, high) < 2**62:
            offsets = labels.astype(np.int64) - low
            present = np.bincount(offsets) > 0
            codes = np.cumsum(present) - 1
            return codes[offsets], int(codes[-1]) + 1
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes.ravel(), len(uniques)


def contingency_table(labels_true, labels_pred) -> Contingency:
    """The sparse contingency table of two labelings (validated)."""
    labels_true, labels_pred = check_labelings(labels_true, labels_pred)
    (a, n_a), (b, n_b) = encode(labels_true), encode(labels_pred)
    return Contingency.from_codes(a, b, n_a, n_b)


def contingency_matrix(labels_true, labels_pred, *, eps=None, sparse=False, dtype=np.int64):
    """Counts ``C[i, j]`` of samples in class i (sorted labels) and cluster j.

    Parameters
    ----------
    labels_true, labels_pred : array (n_samples,)
    eps : float, optional
        Added to every cell of the dense table (which then is float).
    sparse : bool
        Return a SciPy CSR matrix (``eps`` must then be None).
    dtype : the dtype of the table (int64 unless given; eps makes it float)

    Returns
    -------
    array (n_classes, n_clusters), or ``scipy.sparse.csr_matrix`` when ``sparse``.
    """
    if eps is not None and sparse:
        raise ValueError("Cannot set 'eps' when sparse=True; pass sparse=False to add eps")
    if eps is not None and not (isinstance(eps, Real) and eps >= 0):
        raise ValueError(f"eps={eps!r} should be a number >= 0")
    table = contingency_table(labels_true, labels_pred)
    if sparse:
        shape = (table.row_sums.size, table.col_sums.size)
        return sp.csr_matrix((table.counts, (table.rows, table.cols)), shape=shape, dtype=dtype)
    dense = table.dense().astype(dtype, copy=False)
    return dense if eps is None else dense + eps


def pair_confusion_matrix(labels_true, labels_pred) -> np.ndarray:
    """Counts of ordered sample pairs, int64 (2, 2): ``C[i, j]`` pairs that are together in
    the true labeling if i == 1 and in the predicted one if j == 1, as ``sklearn.metrics``."""
    return _pair_confusion(contingency_table(labels_true, labels_pred))


# -- entropies and mutual information ---------------------------------------------
def entropy(labels) -> float:
    """Entropy (nats) of a labeling; 1.0 for no labels, as sklearn's ``_entropy``."""
    return _entropy(_label_sizes(labels))


def _label_sizes(labels) -> np.ndarray:
    """How many samples carry each distinct label (sorted labels): int64 (n_labels,)."""
    labels = as_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels should be 1-d, got shape {labels.shape}")
    codes, n_labels = encode(labels)
    return np.bincount(codes, minlength=n_labels)


def _entropy(sizes: np.ndarray) -> float:
    """Entropy (nats) of a labeling given its label sizes, as sklearn's ``_entropy``."""
    sizes = sizes[sizes > 0].astype(np.float64)
    if sizes.size == 0:
        return 1.0
    if sizes.size == 1:
        return 0.0
    total = sizes.sum()
    return float(-np.sum((sizes / total) * (np.log(sizes) - log(total))))


def _mutual_info(table: Contingency) -> float:
    """Mutual information (nats), computed as ``sklearn.metrics.mutual_info_score``."""
    if table.row_sums.size == 1 or table.col_sums.size == 1 or table.counts.size == 0:
        return 0.0
    n = float(table.counts.sum())
    nz = table.counts.astype(np.float64)
    outer = table.row_sums[table.rows] * table.col_sums[table.cols]
    log_outer = -np.log(outer.astype(np.float64)) + 2 * log(n)
    p = nz / n
    mi = p * (np.log(nz) - log(n)) + p * log_outer
    mi = np.where(np.abs(mi) < _EPS, 0.0, mi)
    return float(np.clip(mi.sum(), 0.0, None))


def expected_mutual_information(contingency, n_samples) -> float:
    """E[MI] of two random labelings with the marginals of ``contingency`` (hypergeometric
    model), exact, as ``sklearn.metrics.cluster.expected_mutual_information``.

    Parameters
    ----------
    contingency : array or SciPy sparse matrix (n_classes, n_clusters)
        Counts of samples per class and cluster (e.g. from ``contingency_matrix``).
    n_samples : int
        The number of samples, the sum of ``contingency``.

    Returns
    -------
    float
        EMI in nats, within 2e-15 of the full hypergeometric sum (``_emi.EMI_TOLERANCE``).
    """
    table = Contingency.from_matrix(contingency)
    if int(n_samples) != table.n_samples:
        raise ValueError(
            f"n_samples={n_samples} but the contingency table counts {table.n_samples} "
            "samples; pass its sum"
        )
    return expected_mutual_information_from_sizes(table.row_sums, table.col_sums)


def expected_mutual_information_from_sizes(row_sums, col_sums) -> float:
    """E[MI] of two random labelings with these label sizes (hypergeometric model), exact.

    Parameters
    ----------
    row_sums, col_sums : array of int, shapes (R,) and (C,)
        Class and cluster sizes; both sum to the number of samples N.

    Returns
    -------
    float
        EMI in nats, within 2e-15 of the full hypergeometric sum (``_emi.EMI_TOLERANCE``).
    """
    a = np.asarray(row_sums, dtype=np.int64)
    b = np.asarray(col_sums, dtype=np.int64)
    a, b = a[a > 0], b[b > 0]
    if a.size <= 1 or b.size <= 1:
        return 0.0
    # imported here: numba takes ~0.3 s to import, and only AMI needs it
    from services.metrics._emi import emi_size_table

    sizes_a, mult_a = np.unique(a, return_counts=True)
    sizes_b, mult_b = np.unique(b, return_counts=True)
    table = emi_size_table(sizes_a, sizes_b, int(a.sum()))
    # einsum's own loop, not BLAS: on a busy machine a threaded gemv can wait ms for its threads
    return float(np.einsum("i,ij,j->", mult_a, table, mult_b))


def _average(u: float, v: float, method: str) -> float:
    if method == "arithmetic":
        return (u + v) / 2
    if method == "geometric":
        return float(np.sqrt(u * v))
    if method == "min":
        return min(u, v)
    if method == "max":
        return max(u, v)
    raise ValueError(f"average_method={method!r} should be one of {list(AVERAGE_METHODS)}")


# -- scores from a contingency table -----------------------------------------------
def _ami(
    table: Contingency, average_method: str = "arithmetic", *, emi: float | None = None
) -> float:
    """AMI of ``table``; ``emi`` may be passed in when it was computed in bulk."""
    n_classes, n_clusters = table.row_sums.size, table.col_sums.size
    if n_classes == n_clusters == 1 or n_classes == n_clusters == 0:
        return 1.0
    if n_classes == 1 or n_clusters == 1:
        return 0.0
    mi = _mutual_info(table)
    if emi is None:
        emi = expected_mutual_information_from_sizes(table.row_sums, table.col_sums)
    normalizer = _average(_entropy(table.row_sums), _entropy(table.col_sums), average_method)
    denominator = normalizer - emi
    denominator = min(denominator, -_EPS) if denominator < 0 else max(denominator, _EPS)
    numerator = mi - emi
    numerator = min(numerator, -_EPS) if numerator < 0 else max(numerator, _EPS)
    return float(numerator / denominator)


def _nmi(table: Contingency, average_method: str = "arithmetic") -> float:
    n_classes, n_clusters = table.row_sums.size, table.col_sums.size
    if n_classes == n_clusters == 1 or n_classes == n_clusters == 0:
        return 1.0
    mi = _mutual_info(table)
    if mi == 0:
        return 0.0
    return float(mi / _average(_entropy(table.row_sums), _entropy(table.col_sums), average_method))


def _pairs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.sum(x * (x - 1) / 2))


def _ari(table: Contingency) -> float:
    n = table.n_samples
    if n == 0:
        return 1.0
    sum_cells = _pairs(table.counts)
    sum_rows, sum_cols = _pairs(table.row_sums), _pairs(table.col_sums)
    total = n * (n - 1) / 2
    expected = sum_rows * sum_cols / total if total else 0.0
    maximum = (sum_rows + sum_cols) / 2
    if maximum == expected:
        return 1.0
    return (sum_cells - expected) / (maximum - expected)


def _pair_confusion(table: Contingency) -> np.ndarray:
    n = np.int64(table.n_samples)
    sum_squares = np.dot(table.counts, table.counts)
    together_true = np.dot(table.row_sums, table.row_sums) - sum_squares
    together_pred = np.dot(table.col_sums, table.col_sums) - sum_squares
    pairs = np.empty((2, 2), dtype=np.int64)
    pairs[1, 1] = sum_squares - n
    pairs[0, 1] = together_pred
    pairs[1, 0] = together_true
    pairs[0, 0] = n * n - together_pred - together_true - sum_squares
    return pairs


def _rand(table: Contingency) -> float:
    pairs = _pair_confusion(table)
    agree, total = int(pairs[0, 0] + pairs[1, 1]), int(pairs.sum())
    return 1.0 if agree == total or total == 0 else agree / total


def _homogeneity_completeness_v(
    table: Contingency, beta: float = 1.0
) -> tuple[float, float, float]:
    if table.n_samples == 0:
        return 1.0, 1.0, 1.0
    h_c, h_k = _entropy(table.row_sums), _entropy(table.col_sums)
    mi = _mutual_info(table)
    homogeneity = mi / h_c if h_c else 1.0
    completeness = mi / h_k if h_k else 1.0
    if homogeneity + completeness == 0.0:
        return homogeneity, completeness, 0.0
    v = (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness)
    return float(homogeneity), float(completeness), float(v)


def _fowlkes_mallows(table: Contingency) -> float:
    n = table.n_samples
    c = table.counts.astype(np.int64)
    tk = int(np.dot(c, c)) - n
    pk = int(np.sum(table.col_sums**2)) - n
    qk = int(np.sum(table.row_sums**2)) - n
    return float(np.sqrt(tk / pk) * np.sqrt(tk / qk)) if tk != 0 else 0.0


def _purity(table: Contingency) -> float:
    n = table.n_samples
    if n == 0:
        return 1.0
    best = np.zeros(table.col_sums.size, dtype=np.int64)
    np.maximum.at(best, table.cols, table.counts)
    return float(best.sum() / n)


SCORES_FROM_CONTINGENCY = {
    "ami": _ami,
    "nmi": _nmi,
    "ari": _ari,
    "purity": _purity,
    "homogeneity": lambda t: _homogeneity_completeness_v(t)[0],
    "completeness": lambda t: _homogeneity_completeness_v(t)[1],
    "v_measure": lambda t: _homogeneity_completeness_v(t)[2],
    "fowlkes_mallows": _fowlkes_mallows,
}


# -- public functions with sklearn's names ------------------------------------------
def adjusted_mutual_info_score(
    labels_true, labels_pred, *, average_method: str = "arithmetic"
) -> float:
    """Mutual information adjusted for chance (exact EMI), as ``sklearn.metrics``."""
    _average(0.0, 0.0, average_method)
    return _ami(contingency_table(labels_true, labels_pred), average_method)


def normalized_mutual_info_score(
    labels_true, labels_pred, *, average_method: str = "arithmetic"
) -> float:
    """Mutual information normalised by a mean of the entropies, as ``sklearn.metrics``."""
    _average(0.0, 0.0, average_method)
    return _nmi(contingency_table(labels_true, labels_pred), average_method)


def mutual_info_score(labels_true, labels_pred, *, contingency=None) -> float:
    """Mutual information in nats; from ``contingency`` (a 2-d table of counts, dense or
    SciPy sparse) when given, and the labels are then ignored."""
    if contingency is not None:
        return _mutual_info(Contingency.from_matrix(contingency))
    return _mutual_info(contingency_table(labels_true, labels_pred))


def rand_score(labels_true, labels_pred) -> float:
    """Fraction of sample pairs on which the two labelings agree (together or apart)."""
    return _rand(contingency_table(labels_true, labels_pred))


def adjusted_rand_score(labels_true, labels_pred) -> float:
    """Rand index adjusted for chance (Hubert & Arabie)."""
    return _ari(contingency_table(labels_true, labels_pred))


def homogeneity_completeness_v_measure(labels_true, labels_pred, *, beta: float = 1.0):
    """(homogeneity, completeness, V-measure) in one pass; ``beta`` weighs completeness."""
    _check_beta(beta)
    return _homogeneity_completeness_v(contingency_table(labels_true, labels_pred), beta)


def _check_beta(beta) -> None:
    if isinstance(beta, bool) or not isinstance(beta, Real) or not beta >= 0:
        raise ValueError(f"beta={beta!r} should be a number >= 0")


def homogeneity_score(labels_true, labels_pred) -> float:
    return homogeneity_completeness_v_measure(labels_true, labels_pred)[0]


def completeness_score(labels_true, labels_pred) -> float:
    return homogeneity_completeness_v_measure(labels_true, labels_pred)[1]


def v_measure_score(labels_true, labels_pred, *, beta: float = 1.0) -> float:
    """Weighted harmonic mean of homogeneity and completeness (``beta`` weighs completeness)."""
    return homogeneity_completeness_v_measure(labels_true, labels_pred, beta=beta)[2]


def fowlkes_mallows_score(labels_true, labels_pred) -> float:
    return _fowlkes_mallows(contingency_table(labels_true, labels_pred))


def purity_score(labels_true, labels_pred) -> float:
    """Accuracy of labelling each cluster with its most frequent true class."""
    return _purity(contingency_table(labels_true, labels_pred))


def clustering_scores(
    labels_true, labels_pred, metrics=("ami", "purity", "ari", "nmi")
) -> dict[str, float]:
    """Several scores from one contingency table: ``{name: value}``."""
    unknown = [m for m in metrics if m not in SCORES_FROM_CONTINGENCY]
    if unknown:
        raise ValueError(
            f"unknown clustering metric(s) {unknown}; choose from {sorted(SCORES_FROM_CONTINGENCY)}"
        )
    table = contingency_table(labels_true, labels_pred)
    return {m: SCORES_FROM_CONTINGENCY[m](table) for m in metrics}
