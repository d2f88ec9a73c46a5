"""Exact Ward clustering in torch by reciprocal-nearest-neighbour (RNN) merging.

Ward's linkage is reducible, so merging, in each round, every pair of clusters
that are each other's nearest neighbour gives the same dendrogram as SciPy's
sequential algorithm. Clusters are kept as centroids and sizes (O(n d) memory),
and nearest neighbours are found by blocked matrix products, on a GPU when the
tensor lives there, on the CPU otherwise (which is how CI tests it).

Heights follow SciPy's convention: merging clusters u and v happens at
sqrt(2 |u| |v| / (|u| + |v|)) * ||c_u - c_v||.
"""

from __future__ import annotations

import numpy as np
import torch

NN_BLOCK_ROWS = 2048  # rows per nearest-neighbour matrix product


def _nearest(centroids, sizes, rows, block_rows: int):
    """Nearest other cluster of each cluster in ``rows``, and the squared Ward distance to it."""
    sq = (centroids * centroids).sum(1)
    best = torch.empty(len(rows), dtype=torch.long, device=centroids.device)
    best_d = torch.empty(len(rows), dtype=centroids.dtype, device=centroids.device)
    for lo in range(0, len(rows), block_rows):
        r = rows[lo : lo + block_rows]
        d2 = sq[r, None] + sq[None, :] - 2 * centroids[r] @ centroids.T
        d2.clamp_(min=0)
        d2 *= 2 * sizes[r, None] * sizes[None, :] / (sizes[r, None] + sizes[None, :])
        d2[torch.arange(len(r), device=r.device), r] = float("inf")
        best_d[lo : lo + len(r)], best[lo : lo + len(r)] = d2.min(dim=1)
    return best, best_d


def ward_linkage(
    X, *, device: str | torch.device | None = None, block_rows: int = NN_BLOCK_ROWS
) -> np.ndarray:
    """SciPy-format Ward linkage matrix (n - 1, 4) of the rows of X, computed in torch float64.

    Each round merges every reciprocal-nearest-neighbour pair, then recomputes the
    nearest neighbour only of the clusters that were merged or whose neighbour was:
    by reducibility, merging i and j never brings the new cluster closer to k than
    k's nearest neighbour, so every other cluster keeps its neighbour.

    Parameters
    ----------
    X : array or tensor (n, d)
    device : torch device; default: X's device if it is a tensor, else CPU.
    """
    if isinstance(X, torch.Tensor):
        points = X.detach().to(device or X.device, dtype=torch.float64)
    else:
        points = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=device or "cpu")
    n, dev = points.shape[0], points.device
    centroids = points.clone()
    sizes = torch.ones(n, dtype=torch.float64, device=dev)
    node = np.arange(n)  # node id of the cluster held in each active slot
    merges: list[tuple[int, int, float, int, int]] = []  # (a, b, height, size, round)
    next_node, round_no = n, 0
    if n > 1:
        nearest, d2 = _nearest(centroids, sizes, torch.arange(n, device=dev), block_rows)
    while centroids.shape[0] > 1:
        m = centroids.shape[0]
        slots = torch.arange(m, device=dev)
        mutual = (nearest[nearest] == slots) & (slots < nearest)
        i, j = slots[mutual], nearest[mutual]
        total = sizes[i] + sizes[j]
        centroids[i] = (centroids[i] * sizes[i, None] + centroids[j] * sizes[j, None]) / total[
            :, None
        ]
        sizes[i] = total
        heights = torch.sqrt(d2[i]).cpu().numpy()
        for a, b, h, size in zip(i.tolist(), j.tolist(), heights, total.tolist(), strict=True):
            merges.append((int(node[a]), int(node[b]), float(h), int(size), round_no))
            node[a] = next_node
            next_node += 1
        merged = torch.zeros(m, dtype=torch.bool, device=dev)
        merged[i] = True
        merged[j] = True
        stale = merged[nearest]  # neighbour merged away: look again
        stale[i] = True  # the new clusters look too
        keep = torch.ones(m, dtype=torch.bool, device=dev)
        keep[j] = False
        new_slot = torch.cumsum(keep, 0) - 1
        centroids, sizes = centroids[keep], sizes[keep]
        node = node[keep.cpu().numpy()]
        nearest, d2, stale = new_slot[nearest][keep], d2[keep], stale[keep]
        if centroids.shape[0] > 1:
            rows = torch.nonzero(stale).flatten()
            nearest[rows], d2[rows] = _nearest(centroids, sizes, rows, block_rows)
        round_no += 1
    return _to_scipy_order(merges, n)


def _to_scipy_order(merges, n: int) -> np.ndarray:
    """Sort merges by height (rounds break ties, keeping children first) and renumber nodes."""
    order = sorted(range(len(merges)), key=lambda k: (merges[k][2], merges[k][4]))
    new_id = {}
    Z = np.empty((len(merges), 4))
    for row, k in enumerate(order):
        a, b, height, size, _ = merges[k]
        a, b = new_id.get(a, a), new_id.get(b, b)
        Z[row] = (min(a, b), max(a, b), height, size)
        new_id[n + k] = n + row
    return Z
