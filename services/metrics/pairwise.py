"""All pairs of clusterings at once: ARI / AMI / ... matrices.

Labelings are coded once; for each row clustering, the contingency tables with a
block of other clusterings come from a single ``bincount`` over the block
(on the GPU with torch when ``device`` names one), and entropies are shared.
"""

from __future__ import annotations

import numpy as np

from services.metrics.clustering import (
    SCORES_FROM_CONTINGENCY,
    Contingency,
    _ami,
    emi_size_table,
    encode,
)

PAIR_BLOCK_CELLS = 1 << 23  # cells of the contingency tables counted in one bincount


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
    counter = _TorchCounter(device) if device else None
    for i in range(m):
        codes_i, n_i = coded[i]
        js = list(range(i + 1, m))
        while js:
            n_max = max(coded[j][1] for j in js)
            block = js[: max(1, PAIR_BLOCK_CELLS // max(1, n_i * n_max))]
            js = js[len(block) :]
            stacked = np.stack([coded[j][0] for j in block])
            flat = (np.arange(len(block))[:, None] * n_i + codes_i[None, :]) * n_max + stacked
            size = len(block) * n_i * n_max
            counts = counter(flat, size) if counter else np.bincount(flat.ravel(), minlength=size)
            counts = counts.reshape(len(block), n_i, n_max)
            for b, j in enumerate(block):
                rows, cols = np.nonzero(counts[b])
                table = Contingency.from_cells(rows, cols, counts[b][rows, cols], n_i, coded[j][1])
                for metric in metrics:
                    if metric == "ami":  # symmetric, with the EMI computed for all pairs at once
                        out[metric][i, j] = out[metric][j, i] = _ami(table, emi=emi[i, j])
                        continue
                    out[metric][i, j] = SCORES_FROM_CONTINGENCY[metric](table)
                    out[metric][j, i] = SCORES_FROM_CONTINGENCY[metric](_transpose(table))
    return out


def _all_pairs_emi(coded) -> np.ndarray:
    """EMI of every pair: multiplicities of each label size, through one shared size table."""
    sizes = [np.bincount(codes, minlength=n_labels) for codes, n_labels in coded]
    all_sizes = np.unique(np.concatenate(sizes))
    all_sizes = all_sizes[all_sizes > 0]
    multiplicity = np.zeros((len(sizes), len(all_sizes)))
    for k, s in enumerate(sizes):
        values, counts = np.unique(s[s > 0], return_counts=True)
        multiplicity[k, np.searchsorted(all_sizes, values)] = counts
    n = int(sizes[0].sum())
    return multiplicity @ emi_size_table(all_sizes, all_sizes, n) @ multiplicity.T


def _transpose(table: Contingency) -> Contingency:
    return Contingency(table.cols, table.rows, table.counts, table.col_sums, table.row_sums)


class _TorchCounter:
    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, torch.device(device)

    def __call__(self, flat: np.ndarray, size: int) -> np.ndarray:
        t = self.torch.from_numpy(np.ascontiguousarray(flat.ravel())).to(self.device)
        return self.torch.bincount(t, minlength=size).cpu().numpy()
