"""SciPy's nearest-neighbour-chain linkage, compiled with numba, run in place.

``scipy.cluster.hierarchy.linkage`` and fastcluster both copy the condensed
distance vector before clustering; at n = 20,000 that copy is another 1.5 GiB.
This is the same algorithm (Müllner 2011, as in SciPy's ``_hierarchy.nn_chain``,
same tie-breaking and Lance-Williams updates), overwriting the distances it is
given, so a fit holds the O(n^2) float64 distances once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

METHOD_CODES = {"single": 0, "complete": 1, "average": 2, "ward": 3}


@njit(cache=True, inline="always")
def _update(method, d_xi, d_yi, d_xy, size_x, size_y, size_i):
    if method == 0:
        return min(d_xi, d_yi)
    if method == 1:
        return max(d_xi, d_yi)
    if method == 2:
        return (size_x * d_xi + size_y * d_yi) / (size_x + size_y)
    t = 1.0 / (size_x + size_y + size_i)
    return np.sqrt(
        (size_i + size_x) * t * d_xi * d_xi
        + (size_i + size_y) * t * d_yi * d_yi
        - size_i * t * d_xy * d_xy
    )


@njit(cache=True)
def _nn_chain(D, n, method):
    Z = np.empty((n - 1, 4))
    size = np.ones(n, dtype=np.int64)
    chain = np.empty(n, dtype=np.int64)
    # D[row[i] + j] is the distance of (i, j) for i < j. Loops are split where i passes
    # x and y, so the part of a scan that runs along one row of the triangle is a
    # contiguous read (1.3-1.5x faster than computing each index with a branch).
    row = np.empty(n, dtype=np.int64)
    for i in range(n):
        row[i] = n * i - (i * (i + 1)) // 2 - i - 1
    length = 0
    for k in range(n - 1):
        if length == 0:
            for i in range(n):
                if size[i] > 0:
                    chain[0] = i
                    length = 1
                    break
        while True:
            x = chain[length - 1]
            if length > 1:
                y = chain[length - 2]
                current = D[row[min(x, y)] + max(x, y)]
            else:
                y = -1
                current = np.inf
            for i in range(x):  # same order and strict < as SciPy: same tie-breaking
                if size[i] > 0 and D[row[i] + x] < current:
                    current = D[row[i] + x]
                    y = i
            for i in range(x + 1, n):
                if size[i] > 0 and D[row[x] + i] < current:
                    current = D[row[x] + i]
                    y = i
            if length > 1 and y == chain[length - 2]:
                break
            chain[length] = y
            length += 1
        length -= 2
        if x > y:
            x, y = y, x
        nx, ny = size[x], size[y]
        Z[k, 0], Z[k, 1], Z[k, 2], Z[k, 3] = x, y, current, nx + ny
        size[x] = 0
        size[y] = nx + ny
        # Lance-Williams: the merged cluster lives in slot y; x < y
        for i in range(x):
            if size[i] > 0:
                D[row[i] + y] = _update(
                    method, D[row[i] + x], D[row[i] + y], current, nx, ny, size[i]
                )
        for i in range(x + 1, y):
            if size[i] > 0:
                D[row[i] + y] = _update(
                    method, D[row[x] + i], D[row[i] + y], current, nx, ny, size[i]
                )
        for i in range(y + 1, n):
            if size[i] > 0:
                D[row[y] + i] = _update(
                    method, D[row[x] + i], D[row[y] + i], current, nx, ny, size[i]
                )
    return Z


@njit(cache=True)
def _relabel(Z, n):
    """Slot ids -> SciPy cluster ids (n + merge index), as ``scipy...._hierarchy.label``."""
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1, dtype=np.int64)
    next_id = n
    for k in range(n - 1):
        x, y = int(Z[k, 0]), int(Z[k, 1])
        while parent[x] != x:
            x = parent[x]
        while parent[y] != y:
            y = parent[y]
        if x < y:
            Z[k, 0], Z[k, 1] = x, y
        else:
            Z[k, 0], Z[k, 1] = y, x
        parent[x] = next_id
        parent[y] = next_id
        size[next_id] = size[x] + size[y]
        Z[k, 3] = size[next_id]
        next_id += 1
    return Z


def nn_chain_linkage(distances: np.ndarray, n: int, method: str) -> np.ndarray:
    """SciPy-format linkage matrix from condensed float64 distances, which are overwritten."""
    if distances.dtype != np.float64 or not distances.flags.c_contiguous:
        raise ValueError("distances must be a C-contiguous float64 condensed vector")
    Z = _nn_chain(distances, n, METHOD_CODES[method])
    Z = Z[np.argsort(Z[:, 2], kind="mergesort")]
    return _relabel(Z, n)
