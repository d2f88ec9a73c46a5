"""Representation similarity between two sets of embeddings of the same samples.

- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al. 2019) and its
  debiased form (the unbiased HSIC estimator of Song et al. 2012, as used by
  Nguyen, Raghu & Kornblith 2021), both from feature-space moments: no n x n Gram
  matrix is formed, so memory is O(d_x * d_y) whatever the number of samples.
- :class:`CKAAccumulator`: the same moments summed over batches of rows, for every
  layer of several runs at once; all layer-pair CKAs come out at the end.
- :func:`mutual_knn_alignment`: the mean fraction of k nearest neighbours (exact,
  cosine similarity) that two representations share, computed in row blocks;
  :func:`streamed_neighbours` finds the same neighbours from a stream of row batches
  (a stored layer) holding at most ``KNN_QUERY_BYTES`` of it at once.

The moments, with x_i the rows shifted by a reference row c (CKA is translation
invariant; the shift keeps float64 sums well conditioned), mu = mean of the shifted
rows, r_i = ||x_i||^2 and a_i = ||x_i - mu||^2 (the centred row norms):

- ``Xc^T Yc = X^T Y - n mu_x mu_y^T``, so HSIC = ||Xc^T Yc||_F^2;
- ``sum_i a_i b_i`` expands into sums of r_i t_i, r_i y_i, t_i x_i, X^T Y and the
  column sums, all of which accumulate row by row (see :func:`_row_norm_products`).

Debiased HSIC (Kornblith's ``feature_space_linear_cka(debiased=True)``):
``||Xc^T Yc||^2 - n / (n - 2) sum_i a_i b_i + (sum_i a_i)(sum_i b_i) / ((n - 1)(n - 2))``,
equal to the Gram-matrix estimator ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2))
- 2 / (n-2) 1'K~L~1] / (n(n-3))`` times n(n-3), a factor that cancels in the ratio
(checked against the Gram formula in the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from services.metrics._validation import as_numpy

KNN_BLOCK_ELEMENTS = 1 << 24  # similarities held at once by mutual_knn_alignment (128 MiB f64)
# rows of a streamed layer held at once by streamed_neighbours (float64): below it a layer
# is read once and searched in memory, above it in query blocks of this size, a pass each
KNN_QUERY_BYTES = 512 << 20
MIN_DEBIASED_SAMPLES = 4  # the unbiased HSIC divides by n - 3


def _torch():
    import torch  # a dependency of the project; imported on first use

    return torch


def _as_tensor(X, device):
    """``X`` (NumPy or torch, any float dtype) as a torch tensor on ``device``, no copy
    where it already is one (the dtype is kept: the caller casts while copying)."""
    torch = _torch()
    if isinstance(X, torch.Tensor):
        return X.detach().to(device=device or X.device)
    X = as_numpy(X)
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(X)).to(device=device or "cpu")


def _check_pair(X, Y) -> None:
    for name, A in (("X", X), ("Y", Y)):
        if A.ndim != 2:
            raise ValueError(f"{name} should be 2-d (n_samples, n_features), got shape {A.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; pass embeddings of the same samples"
        )


class _Side:
    """Moments of every layer of one run, over its *wide* batches.

    A wide batch is one float64 (rows, sum of d + n_layers) matrix: every layer's rows
    shifted by that layer's reference row, side by side, then one column per layer
    holding the shifted rows' squared norms r_i. Kept: n, the column sums of the wide
    matrix (the layers' sums, then sum_i r_i), sum_i r_i^2 per layer, per layer X^T X
    and sum_i r_i x_i.
    """

    def __init__(self, dims: list[int], device, dtype):
        torch = _torch()
        self.dims = dims
        self.starts = np.cumsum([0, *dims])
        self.width = int(self.starts[-1])  # the norm columns follow
        self.n = 0
        self.shift = None  # (width,) the first batch's mean rows: any fixed rows would do
        self.sums = torch.zeros(self.width + len(dims), device=device, dtype=dtype)
        self.norms2 = torch.zeros(len(dims), device=device, dtype=dtype)
        self.gram = [torch.zeros((d, d), device=device, dtype=dtype) for d in dims]
        self.weighted = torch.zeros(self.width, device=device, dtype=dtype)
        self.buffer = None  # the wide batch, reused from batch to batch

    def layer(self, k: int) -> slice:
        return slice(int(self.starts[k]), int(self.starts[k + 1]))

    def wide(self, layers) -> object:
        """The wide batch of ``layers`` (each (rows, d_k), any float dtype)."""
        rows = layers[0].shape[0]
        if self.buffer is None or self.buffer.shape[0] < rows:
            self.buffer = _torch().empty(
                (rows, self.width + len(self.dims)), device=self.sums.device, dtype=self.sums.dtype
            )
        wide = self.buffer[:rows]
        for k, X in enumerate(layers):
            wide[:, self.layer(k)].copy_(X)  # cast to float64 while copying
        if self.shift is None:
            self.shift = wide[:, : self.width].mean(0)
        wide[:, : self.width].sub_(self.shift)
        for k in range(len(self.dims)):
            X = wide[:, self.layer(k)]
            wide[:, self.width + k] = (X * X).sum(1)
        return wide

    def update(self, wide) -> None:
        self.n += wide.shape[0]
        self.sums += wide.sum(0)
        norms = wide[:, self.width :]
        self.norms2 += (norms * norms).sum(0)
        for k, gram in enumerate(self.gram):
            X = wide[:, self.layer(k)]
            gram.addmm_(X.T, X)
            self.weighted[self.layer(k)] += norms[:, k] @ X

    def moments(self, k: int) -> tuple:
        """(sum of the shifted rows, sum_i r_i) of layer ``k``."""
        return self.sums[self.layer(k)], float(self.sums[self.width + k])


class _Cross:
    """Cross moments of two runs: the product of their wide batches, summed.

    Its blocks are X^T Y (layers of A x layers of B), X^T R', R^T Y and R^T R' (R, R' the
    norm columns)."""

    def __init__(self, a: _Side, b: _Side):
        torch = _torch()
        self.a, self.b = a, b
        self.product = torch.zeros(
            (a.width + len(a.dims), b.width + len(b.dims)),
            device=a.sums.device,
            dtype=a.sums.dtype,
        )

    def update(self, wide_a, wide_b) -> None:
        self.product.addmm_(wide_a.T, wide_b)

    def blocks(self, p: int, q: int) -> tuple:
        """(X^T Y, R^T R', R^T Y, X^T R') of layer ``p`` of A and layer ``q`` of B."""
        sa, sb = self.a.layer(p), self.b.layer(q)
        ra, rb = self.a.width + p, self.b.width + q
        m = self.product
        return m[sa, sb], float(m[ra, rb]), m[ra, sb], m[sa, rb]


class CKAAccumulator:
    """Linear CKA between every layer of several runs, from batches of rows.

    Feed aligned batches (row i of every array is the same sample) of every layer
    of every run with :meth:`update`; :meth:`result` gives the layer x layer CKA of a
    pair of runs. Work is done with torch on ``device`` (``"cuda"`` when present;
    ``None``: the CPU, or the device of torch inputs), in float64.

    Memory, with W the sum of a run's layer widths plus its number of layers and B
    the rows of a batch: per run a (B, W) float64 batch buffer and a (d, d) matrix per
    layer; per pair of runs one W_A x W_B float64 matrix (every cross moment, one
    matrix product per batch); nothing grows with the number of batches.

    Parameters
    ----------
    n_runs : int
        How many runs (sides) each :meth:`update` receives.
    pairs : sequence of (int, int), optional
        The pairs of runs to accumulate cross moments for; default every i < j.
    device : str, optional

    Examples
    --------
    >>> acc = CKAAccumulator(2)
    >>> for batch_a, batch_b in batches:  # doctest: +SKIP
    ...     acc.update([batch_a, batch_b])  # each a list of (rows, d_layer) arrays
    >>> acc.result(0, 1)  # doctest: +SKIP
    """

    def __init__(self, n_runs: int, pairs: Sequence[tuple[int, int]] | None = None, *, device=None):
        if n_runs < 1:
            raise ValueError(f"n_runs={n_runs} should be >= 1")
        self.n_runs = n_runs
        self.pairs = (
            [tuple(p) for p in pairs]
            if pairs is not None
            else [(i, j) for i in range(n_runs) for j in range(i + 1, n_runs)]
        )
        bad = [p for p in self.pairs if not (0 <= p[0] < n_runs and 0 <= p[1] < n_runs)]
        if bad:
            raise ValueError(f"pairs {bad} name runs outside 0..{n_runs - 1}")
        self.device = device
        self._sides: list[_Side] | None = None
        self._cross: dict[tuple[int, int], _Cross] = {}
        self._dims: list[list[int]] | None = None

    @property
    def n_samples(self) -> int:
        return self._sides[0].n if self._sides else 0

    def update(self, runs: Sequence[Sequence]) -> None:
        """Add one batch: ``runs[r][l]`` is an array (rows, d_l) of layer l of run r.

        Every array of a call holds the same rows (samples), in the same order.
        """
        if len(runs) != self.n_runs:
            raise ValueError(f"update got {len(runs)} runs, expected n_runs={self.n_runs}")
        tensors = [[_as_tensor(X, self.device) for X in layers] for layers in runs]
        dims = [[X.shape[1] if X.ndim == 2 else -1 for X in layers] for layers in tensors]
        rows = {X.shape[0] for layers in tensors for X in layers}
        if any(X.ndim != 2 for layers in tensors for X in layers) or len(rows) != 1:
            raise ValueError(
                f"every array of one update should be 2-d with the same rows, got row counts "
                f"{sorted(rows)}; pass aligned batches of the same samples"
            )
        if self._sides is None:
            device = tensors[0][0].device
            dtype = _torch().float64
            self._sides = [_Side(d, device, dtype) for d in dims]
            self._cross = {(i, j): _Cross(self._sides[i], self._sides[j]) for i, j in self.pairs}
            self._dims = dims
        elif dims != self._dims:
            raise ValueError(f"layer widths {dims} differ from the first batch's {self._dims}")
        wide = [side.wide(layers) for side, layers in zip(self._sides, tensors, strict=True)]
        for side, batch in zip(self._sides, wide, strict=True):
            side.update(batch)
        for (i, j), cross in self._cross.items():
            cross.update(wide[i], wide[j])

    def result(self, i: int = 0, j: int = 1, *, debiased: bool = False) -> np.ndarray:
        """CKA of every layer of run ``i`` (rows) with every layer of run ``j`` (columns).

        Returns
        -------
        float64 array (n_layers_i, n_layers_j)
        """
        if (i, j) not in self._cross:
            raise ValueError(f"runs ({i}, {j}) are not among the accumulated pairs {self.pairs}")
        n = self.n_samples
        if n < 2 or (debiased and n < MIN_DEBIASED_SAMPLES):
            raise ValueError(
                f"CKA needs n_samples >= {MIN_DEBIASED_SAMPLES if debiased else 2}, got {n}"
            )
        a, b, cross = self._sides[i], self._sides[j], self._cross[(i, j)]
        self_a = [_self_hsic(a, k, debiased) for k in range(len(a.dims))]
        self_b = [_self_hsic(b, k, debiased) for k in range(len(b.dims))]
        out = np.empty((len(self_a), len(self_b)))
        for p in range(len(self_a)):
            for q in range(len(self_b)):
                hsic = _hsic(n, a.moments(p), b.moments(q), *cross.blocks(p, q), debiased)
                denominator = np.sqrt(self_a[p] * self_b[q])
                out[p, q] = hsic / denominator if denominator > 0 else np.nan
        return out


def _hsic(n, side_x, side_y, xy, rr, ry, xr, debiased: bool) -> float:
    """(Debiased) HSIC x n^2 (or x n(n-3)) from the moments of one layer pair."""
    (sx, qx), (sy, qy) = side_x, side_y
    centred = xy - (sx[:, None] * sy[None, :]) / n  # Xc^T Yc
    value = float((centred * centred).sum())
    if not debiased:
        return value
    products = _row_norm_products(n, sx, qx, sy, qy, xy, rr, ry, xr)
    norm_x, norm_y = qx - float(sx @ sx) / n, qy - float(sy @ sy) / n  # sum_i a_i, sum_i b_i
    return value - n / (n - 2) * products + norm_x * norm_y / ((n - 1) * (n - 2))


def _row_norm_products(n, sx, qx, sy, qy, xy, rr, ry, xr) -> float:
    """sum_i ||x_i - mu_x||^2 ||y_i - mu_y||^2 from sums over the (shifted) rows.

    With r_i = ||x_i||^2, t_i = ||y_i||^2, m = ||mu||^2:
    ``rr - 2 ry.mu_y - 2 xr.mu_x + 4 mu_x' X'Y mu_y + m_y q_x + m_x q_y
    - 2 m_y s_x.mu_x - 2 m_x s_y.mu_y + n m_x m_y``.
    """
    mu_x, mu_y = sx / n, sy / n
    m_x, m_y = float(mu_x @ mu_x), float(mu_y @ mu_y)
    return (
        rr
        - 2 * float(ry @ mu_y)
        - 2 * float(xr @ mu_x)
        + 4 * float(mu_x @ (xy @ mu_y))
        + m_y * qx
        + m_x * qy
        - 2 * m_y * float(sx @ mu_x)
        - 2 * m_x * float(sy @ mu_y)
        + n * m_x * m_y
    )


def _self_hsic(side: _Side, k: int, debiased: bool) -> float:
    layer = side.layer(k)
    return _hsic(
        side.n,
        side.moments(k),
        side.moments(k),
        side.gram[k],
        float(side.norms2[k]),
        side.weighted[layer],
        side.weighted[layer],
        debiased,
    )


def linear_cka(X, Y, *, debiased: bool = False, device=None) -> float:
    """Linear CKA between two representations of the same samples.

    ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with Xc, Yc the column-centred
    features: no n x n Gram matrix is formed. float64 accumulation.

    Parameters
    ----------
    X : array (n_samples, d_x), NumPy or torch, any float dtype
    Y : array (n_samples, d_y), the same samples in the same order
    debiased : bool
        Use the unbiased HSIC estimator (Song et al. 2012), as in Nguyen, Raghu &
        Kornblith (2021); needs n_samples >= 4. It can be slightly negative.
    device : str, optional
        torch device to compute on; default the CPU (or the device of torch inputs).

    Returns
    -------
    float in [0, 1] (debiased: about [-1/n, 1]); NaN if X or Y is constant.
    """
    _check_pair(X, Y)
    if device is None and hasattr(X, "device") and not isinstance(X, np.ndarray):
        device = X.device
    acc = CKAAccumulator(2, device=device)
    acc.update([[X], [Y]])
    return float(acc.result(0, 1, debiased=debiased)[0, 0])


def nearest_neighbours(X, k: int = 10) -> np.ndarray:
    """Indices of the ``k`` nearest other rows of every row, by cosine similarity.

    Exact (every pair is compared), in blocks of rows so at most
    ``KNN_BLOCK_ELEMENTS`` similarities are held at once. Ties are broken arbitrarily.

    Parameters
    ----------
    X : array (n_samples, d), NumPy or torch
    k : int, 1 <= k < n_samples

    Returns
    -------
    int64 array (n_samples, k), each row's neighbours sorted by index
    """
    X = as_numpy(X).astype(np.float64)
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} should be between 1 and n_samples - 1 = {n - 1}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X = X / np.where(norms > 0, norms, 1.0)
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, KNN_BLOCK_ELEMENTS // n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        similarity = X[start:stop] @ X.T
        similarity[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not itself
        out[start:stop] = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    out.sort(axis=1)
    return out


def _unit_rows(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def streamed_neighbours(
    read: Callable[[], Iterable[np.ndarray]],
    n: int,
    k: int = 10,
    *,
    query_bytes: int = KNN_QUERY_BYTES,
) -> np.ndarray:
    """:func:`nearest_neighbours` of ``n`` rows available only as a stream of batches.

    ``read()`` gives a fresh iterator over (rows, d) batches of the same rows in the
    same order each time it is called (a scan of a stored layer). Exact cosine
    similarity, the row itself excluded. Memory: a query block of at most
    ``query_bytes`` (float64 rows), one batch and the block's running top ``k``.
    If all ``n`` rows fit the block the stream is read once and searched in memory;
    otherwise block b is collected during pass b and compared with every row during
    pass b + 1, so there are ``ceil(n d 8 / query_bytes) + 1`` passes.

    Returns
    -------
    int64 array (n, k): positions (in stream order) of each row's neighbours, sorted
    """
    if not 1 <= k < n:
        raise ValueError(f"k={k} should be between 1 and n_samples - 1 = {n - 1}")
    out = np.empty((n, k), dtype=np.int64)
    held, held_start, block_rows, start = None, 0, None, 0
    while True:
        collected, position = [], 0
        for batch in read():
            batch = _unit_rows(batch)
            if block_rows is None:
                block_rows = max(1, query_bytes // (8 * max(1, batch.shape[1])))
            if held is not None:
                held.update(batch, position)
            stop = min(n, start + block_rows)
            if start < n and position < stop and position + len(batch) > start:
                collected.append(batch[max(0, start - position) : stop - position])
            position += len(batch)
        if position != n:
            raise ValueError(f"the stream holds {position} rows, expected n={n}")
        if held is not None:
            out[held_start : held_start + len(held.rows)] = held.result()
        if start >= n:
            break
        rows = np.concatenate(collected) if len(collected) > 1 else collected[0]
        if start == 0 and len(rows) == n:  # the whole stream fits one block
            return nearest_neighbours(rows, k)
        held, held_start, start = _TopK(rows, held_start=start, k=k), start, start + len(rows)
    out.sort(axis=1)
    return out


class _TopK:
    """The ``k`` most similar stream rows of a block of (unit) query rows, as batches pass."""

    def __init__(self, rows: np.ndarray, *, held_start: int, k: int):
        self.rows, self.start, self.k = rows, held_start, k
        self.similarity = np.full((len(rows), k), -np.inf)
        self.index = np.zeros((len(rows), k), dtype=np.int64)

    def update(self, batch: np.ndarray, position: int) -> None:
        step = max(1, KNN_BLOCK_ELEMENTS // max(1, len(batch) + self.k))
        positions = np.arange(position, position + len(batch))
        for a in range(0, len(self.rows), step):
            b = min(len(self.rows), a + step)
            similarity = self.rows[a:b] @ batch.T
            itself = np.arange(self.start + a, self.start + b)[:, None] == positions[None, :]
            similarity[itself] = -np.inf
            candidates = np.concatenate([self.similarity[a:b], similarity], axis=1)
            index = np.concatenate(
                [self.index[a:b], np.broadcast_to(positions, similarity.shape)], axis=1
            )
            best = np.argpartition(-candidates, self.k - 1, axis=1)[:, : self.k]
            self.similarity[a:b] = np.take_along_axis(candidates, best, axis=1)
            self.index[a:b] = np.take_along_axis(index, best, axis=1)

    def result(self) -> np.ndarray:
        return self.index


def knn_overlap(neighbours_x: np.ndarray, neighbours_y: np.ndarray) -> float:
    """Mean over rows of |N_x(i) & N_y(i)| / k for two (n_samples, k) neighbour index arrays."""
    if neighbours_x.shape != neighbours_y.shape:
        raise ValueError(
            f"neighbour arrays have shapes {neighbours_x.shape} and {neighbours_y.shape}; "
            "pass neighbours of the same samples with the same k"
        )
    n, k = neighbours_x.shape
    shared = 0
    step = max(1, KNN_BLOCK_ELEMENTS // (k * k))
    for start in range(0, n, step):
        a, b = neighbours_x[start : start + step], neighbours_y[start : start + step]
        shared += int((a[:, :, None] == b[:, None, :]).sum())
    return shared / (n * k)


def mutual_knn_alignment(X, Y, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment of two representations of the same samples.

    For every sample, the fraction of its ``k`` nearest neighbours (exact, cosine
    similarity, the sample itself excluded) under X that are also among its ``k``
    nearest under Y; averaged over samples (Huh et al. 2024, "The Platonic
    Representation Hypothesis").

    Parameters
    ----------
    X : array (n_samples, d_x), NumPy or torch
    Y : array (n_samples, d_y)
    k : int, 1 <= k < n_samples

    Returns
    -------
    float in [0, 1]; k / (n_samples - 1) is its expectation for unrelated representations.
    """
    _check_pair(X, Y)
    return knn_overlap(nearest_neighbours(X, k), nearest_neighbours(Y, k))
