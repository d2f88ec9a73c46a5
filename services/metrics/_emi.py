"""Expected mutual information of label sizes, compiled with numba.

For a class of size a and a cluster of size b among N samples, the count of
their overlap n_ij is hypergeometric, and EMI sums
``P(n_ij = k) * (k / N) * log(N k / (a b))`` over k. The probabilities are
computed by their ratio from one k to the next, starting at the mode (one
log-factorial evaluation per size pair), and each side stops once the terms
left provably weigh less than ``EMI_TOLERANCE * a * b / N**2``.

Why stopping there is exact to ``2 * EMI_TOLERANCE``: the hypergeometric pmf is
log-concave, so the ratio ``r(k) = P(k + 1) / P(k)`` decreases with k. Past the
mode, every later ratio is at most r(k) < 1, and the mass above k is at most
``P(k) * r(k) / (1 - r(k))`` (a geometric series); below the mode likewise with
``P(k - 1) / P(k)``. Each term's factor ``(k / N) log(N k / (a b))`` is at most
``W = (hi / N) max(|log(N / (a b))|, |log(N hi / (a b))|)`` in absolute value
for 1 <= k <= hi = min(a, b), because the logarithm is monotone in k. So the
terms a side skips sum to at most ``W P(k) r / (1 - r)``, which is what is
compared with the budget. Summed over all class x cluster pairs, the budgets add
up to ``EMI_TOLERANCE * sum(a) * sum(b) / N**2 = EMI_TOLERANCE`` per side, so
the EMI of two labelings is within ``2 * EMI_TOLERANCE`` of the full sum,
whatever their sizes. Rounding (about 1e-16 relative per step of the ratio,
and the log-factorials of N at the mode, as in scikit-learn) stays far below
the 1e-9 of AMI that tests ask.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.special import gammaln

EMI_TOLERANCE = 1e-15  # bound on the skipped hypergeometric terms of one side of the EMI sum


def log_factorials(n: int) -> np.ndarray:
    """``log(k!)`` for k = 0..n, float64 (n + 1,): 8 bytes per sample, as the labels take."""
    return gammaln(np.arange(n + 1, dtype=np.float64) + 1.0)


def emi_size_table(sizes_a, sizes_b, n: int) -> np.ndarray:
    """EMI contribution of one class of each size in ``sizes_a`` meeting one cluster of each
    size in ``sizes_b``, for N = ``n`` samples: float64 (len(sizes_a), len(sizes_b)).

    EMI of two labelings is ``mult_a @ table @ mult_b`` with their size multiplicities,
    so one table serves every pair of labelings of the same N.
    """
    sizes_a = np.ascontiguousarray(sizes_a, dtype=np.int64)
    sizes_b = np.ascontiguousarray(sizes_b, dtype=np.int64)
    n = int(n)
    if sizes_a.size == 0 or sizes_b.size == 0:
        return np.zeros((sizes_a.size, sizes_b.size))
    # a table lookup is a third of the cost of a logarithm in the inner loop
    largest = max(int(sizes_a.max()), int(sizes_b.max()))
    log_ints = np.log(np.maximum(np.arange(largest + 1, dtype=np.float64), 1.0))
    # the overlap of a class of size a and a cluster of size b is distributed as that of
    # a class of size b and a cluster of size a, so a square table is summed once per pair
    symmetric = np.array_equal(sizes_a, sizes_b)
    return _size_table(sizes_a, sizes_b, n, log_factorials(n), log_ints, EMI_TOLERANCE, symmetric)


@njit(cache=True)
def _size_table(sizes_a, sizes_b, n, log_fact, log_ints, tolerance, symmetric):
    table = np.zeros((sizes_a.size, sizes_b.size))
    log_n = math.log(n)
    for i in range(sizes_a.size):
        for j in range(i if symmetric else 0, sizes_b.size):
            table[i, j] = _size_pair(
                sizes_a[i], sizes_b[j], n, log_n, log_fact, log_ints, tolerance
            )
            if symmetric:
                table[j, i] = table[i, j]
    return table


@njit(cache=True, inline="always")
def _size_pair(a, b, n, log_n, log_fact, log_ints, tolerance):
    """EMI terms of one class of size ``a`` and one cluster of size ``b``, summed."""
    lo = max(1, a + b - n)  # k = 0 adds nothing
    hi = min(a, b)
    if lo > hi:
        return 0.0
    mode = min(max((a + 1) * (b + 1) // (n + 2), lo), hi)
    rest = n - a - b  # P(k + 1) / P(k) = (a - k)(b - k) / ((k + 1)(rest + k + 1))
    log_pmf = (
        log_fact[a]
        + log_fact[b]
        + log_fact[n - a]
        + log_fact[n - b]
        - log_fact[n]
        - log_fact[mode]
        - log_fact[a - mode]
        - log_fact[b - mode]
        - log_fact[rest + mode]
    )
    shift = log_n - log_ints[a] - log_ints[b]  # log(N k / (a b)) = shift + log(k)
    weight = hi / n * max(abs(shift), abs(shift + log_ints[hi]))
    budget = tolerance * (a / n) * (b / n)
    pmf_mode = math.exp(log_pmf)
    total = pmf_mode * (mode / n) * (shift + log_ints[mode])
    pmf, k = pmf_mode, mode
    while k < hi:
        ratio = (a - k) * (b - k) / ((k + 1.0) * (rest + k + 1.0))
        if ratio < 1.0 and weight * pmf * ratio <= budget * (1.0 - ratio):
            break
        pmf *= ratio
        k += 1
        total += pmf * (k / n) * (shift + log_ints[k])
    pmf, k = pmf_mode, mode
    while k > lo:
        ratio = k * (rest + k + 0.0) / ((a - k + 1.0) * (b - k + 1.0))
        if ratio < 1.0 and weight * pmf * ratio <= budget * (1.0 - ratio):
            break
        pmf *= ratio
        k -= 1
        total += pmf * (k / n) * (shift + log_ints[k])
    return total
