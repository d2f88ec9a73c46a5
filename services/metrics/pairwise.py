"""All pairs of clusterings at once: ARI / AMI / ... matrices.

Labelings are coded once; each pair's contingency table is counted from the
codes (on the GPU with torch when ``device`` names one), and the expected mutual
information of every pair comes from one table over the label sizes that
occur in any labeling, so each pair of sizes is summed once for all pairs.
"""

from __future__ import annotations

import numpy as np

from services.metrics.clustering import (
    SCORES_FROM_CONTINGENCY,
    Contingency,
    _ami,
    encode,
)


def pairwise_scores(
    labelings, metrics=("ari", "ami"), *, device: str | None = None
) -> dict[str, np.ndarray]:
    """Score every pair of ``labelings`` (all of the same samples).

    Parameters
    ----------
    labelings : sequence of array (n_samples,) or array (n_labelings, n_samples)
    metrics : names from ``SCORES_FROM_CONTINGENCY`` (symmetric ones: ari, ami, nmi, ...)
    device : str, optional
        ``"cuda"`` (or ``"cpu"``) counts contingency tables with torch there.

    Returns
    -------
    dict of metric -> float64 array (n_labelings, n_labelings); entry [i, j]
    scores labeling i as truth against labeling j as prediction.
    """
    unknown = [m for m in metrics if m not in SCORES_FROM_CONTINGENCY]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {unknown}; choose from {sorted(SCORES_FROM_CONTINGENCY)}"
        )
    coded = [encode(labels) for labels in labelings]
    lengths = {len(codes) for codes, _ in coded}
    if len(lengths) > 1:
        raise ValueError(
            f"labelings have different lengths {sorted(lengths)}; "
            "pass labelings of the same samples"
        )
    m = len(coded)
    out = {metric: np.eye(m) for metric in metrics}
    emi = _all_pairs_emi(coded) if "ami" in metrics else None
    count = _table_counter(coded, device)
    for i in range(m):
        for j in range(i + 1, m):
            table = count(i, j)
            for metric in metrics:
                if metric == "ami":  # symmetric, with the EMI computed for all pairs at once
                    out[metric][i, j] = out[metric][j, i] = _ami(table, emi=emi[i, j])
                    continue
                out[metric][i, j] = SCORES_FROM_CONTINGENCY[metric](table)
                out[metric][j, i] = SCORES_FROM_CONTINGENCY[metric](_transpose(table))
    return out


def _all_pairs_emi(coded) -> np.ndarray:
    """EMI of every pair: multiplicities of each label size, through one shared size table."""
    from services.metrics._emi import emi_size_table  # numba, ~0.3 s to import: only for AMI

    sizes = [np.bincount(codes, minlength=n_labels) for codes, n_labels in coded]
    all_sizes = np.unique(np.concatenate(sizes))
    all_sizes = all_sizes[all_sizes > 0]
    multiplicity = np.zeros((len(sizes), len(all_sizes)))
    for k, s in enumerate(sizes):
        values, counts = np.unique(s[s > 0], return_counts=True)
        multiplicity[k, np.searchsorted(all_sizes, values)] = counts
    n = int(sizes[0].sum())
    table = emi_size_table(all_sizes, all_sizes, n)
    # einsum's own loops, not BLAS: on a busy machine a threaded gemm can wait ms for its threads
    by_size = np.einsum("ia,ab->ib", multiplicity, table)
    return np.einsum("ib,jb->ij", by_size, multiplicity)


def _transpose(table: Contingency) -> Contingency:
    return Contingency(table.cols, table.rows, table.counts, table.col_sums, table.row_sums)


def _table_counter(coded, device: str | None):
    """A function ``(i, j) -> Contingency`` of coded labelings i and j, counted on ``device``."""
    if device is None:

        def count(i: int, j: int) -> Contingency:
            (a, n_a), (b, n_b) = coded[i], coded[j]
            return Contingency.from_codes(a, b, n_a, n_b)

        return count
    import torch

    on_device = [torch.from_numpy(codes.astype(np.int64)).to(device) for codes, _ in coded]

    def count_on_device(i: int, j: int) -> Contingency:
        n_j = coded[j][1]
        cells, counts = torch.unique(on_device[i] * n_j + on_device[j], return_counts=True)
        cells, counts = cells.cpu().numpy(), counts.cpu().numpy()
        return Contingency.from_cells(cells // n_j, cells % n_j, counts, coded[i][1], n_j)

    return count_on_device
