"""Intraclass clustering measures c1-c4 (Carbonnelle & De Vleeschouwer, ICLR 2021)
and the granulated Kendall coefficient used to relate them to generalisation.

``layers`` arguments are lists of per-layer arrays (n_samples, n_neurons) of
pre-activations (after batch norm, before ReLU; conv maps reduced by global max
pooling, see :func:`global_max_pool`).
"""

from __future__ import annotations

import numpy as np

from services.metrics._validation import check_embeddings

NEURONS_TOP_K = 30
C4_ACTIVE_FRACTION = 0.25
C4_MAX_SAMPLES = 2000  # pairwise distances over the dataset are estimated on a subsample


def global_max_pool(feature_maps) -> np.ndarray:
    """(n, channels, h, w) -> (n, channels): a conv neuron is its whole feature map."""
    feature_maps = np.asarray(feature_maps)
    return feature_maps.reshape(*feature_maps.shape[:2], -1).max(axis=-1)


def _top_k_mean(values: np.ndarray, k: int) -> float:
    k = min(k, values.size)
    return float(np.sort(values)[-k:].mean())


def _stack(layers) -> np.ndarray:
    arrays = [np.asarray(a, dtype=np.float64) for a in layers]
    if not arrays or any(a.ndim != 2 or len(a) != len(arrays[0]) for a in arrays):
        raise ValueError(
            "layers should be a list of (n_samples, n_neurons) arrays of the same samples"
        )
    return np.concatenate(arrays, axis=1)


def intraclass_c1(layers, subclass, superclass, *, k: int = NEURONS_TOP_K) -> float:
    """Neuron-level subclass selectivity: median over subclasses of the mean of the top-k
    (mu_{n,Ci} - mu_{n,S\\Ci}) / (sigma_{n,Ci} + sigma_{n,S\\Ci}) over all neurons n."""
    A = _stack(layers)
    A, subclass = check_embeddings(A, subclass, name="layers")
    superclass = np.asarray(superclass)
    scores = []
    for c in np.unique(subclass):
        inside = subclass == c
        rest = (superclass == superclass[inside][0]) & ~inside
        if not rest.any():
            continue
        gap = A[inside].mean(0) - A[rest].mean(0)
        spread = A[inside].std(0) + A[rest].std(0)
        ratio = np.divide(gap, spread, out=np.zeros_like(gap), where=spread > 0)
        scores.append(_top_k_mean(ratio, k))
    return float(np.median(scores))


def intraclass_c2(layers, subclass, superclass, *, k: int = 1) -> float:
    """Layer-level silhouette: median over subclasses of the mean of the top-k layers'
    mean cosine silhouette of the subclass within its superclass."""
    from sklearn.metrics import silhouette_samples

    subclass, superclass = np.asarray(subclass), np.asarray(superclass)
    per_layer = []
    for layer in layers:
        layer = np.asarray(layer, dtype=np.float64)
        values = {}
        for s in np.unique(superclass):
            members = superclass == s
            if len(np.unique(subclass[members])) < 2:
                continue
            samples = silhouette_samples(layer[members], subclass[members], metric="cosine")
            for c in np.unique(subclass[members]):
                values[c] = samples[subclass[members] == c].mean()
        per_layer.append(values)
    subclasses = sorted(per_layer[0])
    return float(
        np.median([_top_k_mean(np.array([v[c] for v in per_layer]), k) for c in subclasses])
    )


def intraclass_c3(layers, labels, *, k: int = NEURONS_TOP_K) -> float:
    """Neuron-level variance: mean over classes of the top-k mean of sigma_{n,Ci} / sigma_{n,D}."""
    A = _stack(layers)
    A, labels = check_embeddings(A, labels, name="layers")
    overall = A.std(0)
    scores = []
    for c in np.unique(labels):
        ratio = np.divide(
            A[labels == c].std(0), overall, out=np.zeros(A.shape[1]), where=overall > 0
        )
        scores.append(_top_k_mean(ratio, k))
    return float(np.mean(scores))


def intraclass_c4(layers, labels, *, k: int = 1, random_state: int = 0) -> float:
    """Layer-level variance: mean over classes of the mean of the top-k layers'
    std of pairwise cosine distances within the class over that within the dataset.

    Each neuron is standardised, then shifted so that 25% of samples are active, then ReLU.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(random_state)
    per_layer = []
    for layer in layers:
        Z = np.asarray(layer, dtype=np.float64)
        Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 0, Z.std(0), 1)
        Z = np.maximum(Z - np.quantile(Z, 1 - C4_ACTIVE_FRACTION, axis=0), 0)
        sample = rng.choice(len(Z), min(len(Z), C4_MAX_SAMPLES), replace=False)
        overall = _std(_cosine_distances(Z[sample]))
        ratios = {}
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            members = members[:C4_MAX_SAMPLES]
            ratios[c] = _std(_cosine_distances(Z[members])) / overall
        per_layer.append(ratios)
    scores = []
    for c in sorted(per_layer[0]):
        finite = np.array([v[c] for v in per_layer if np.isfinite(v[c])])
        if finite.size:  # a class none of whose samples a layer activates is left out
            scores.append(_top_k_mean(finite, k))
    return float(np.mean(scores)) if scores else float("nan")


def _cosine_distances(Z: np.ndarray) -> np.ndarray:
    """Condensed pairwise cosine distances between the rows of ``Z`` that have an active
    neuron (a zero row has no direction: its distances are undefined and left out)."""
    from scipy.spatial.distance import pdist

    return pdist(Z[np.abs(Z).sum(axis=1) > 0], metric="cosine")


def _std(values: np.ndarray) -> float:
    return float(values.std()) if values.size else float("nan")


def kendall_tau(measure, accuracy) -> float:
    """Kendall's tau as Jiang et al. (2020) define it: the mean over ordered pairs of
    models of sign(measure difference) x sign(accuracy difference).

    A tied pair counts 0 (tau-a); without ties it equals ``scipy.stats.kendalltau``.
    NaN for fewer than two models.
    """
    measure, accuracy = np.asarray(measure, float), np.asarray(accuracy, float)
    n = len(measure)
    if n < 2:
        return float("nan")
    signs = np.sign(measure[:, None] - measure[None, :]) * np.sign(
        accuracy[:, None] - accuracy[None, :]
    )
    return float(signs.sum() / (n * (n - 1)))


def granulated_kendall(measure, accuracy, hyperparameters) -> tuple[float, dict[int, float]]:
    """Granulated Kendall coefficient (Jiang et al. 2020) of a measure against test accuracy.

    Parameters
    ----------
    measure, accuracy : array (n_models,)
    hyperparameters : array (n_models, n_axes)
        Each model's setting on each hyperparameter axis.

    Returns
    -------
    total : float
        Mean over axes of the per-axis coefficients (axes with no variation left out).
    per_axis : dict
        For axis i: the mean :func:`kendall_tau` over groups of models that share
        every other hyperparameter and differ only along axis i (NaN when no group
        varies along it).
    """
    measure, accuracy = np.asarray(measure, float), np.asarray(accuracy, float)
    H = np.asarray(hyperparameters, dtype=object)
    if H.ndim != 2 or H.shape[0] != measure.shape[0] or accuracy.shape != measure.shape:
        raise ValueError("measure, accuracy and hyperparameters should describe the same models")
    per_axis = {}
    for axis in range(H.shape[1]):
        others = [a for a in range(H.shape[1]) if a != axis]
        groups: dict = {}
        for model, row in enumerate(H):
            groups.setdefault(tuple(row[others]), []).append(model)
        taus = [
            kendall_tau(measure[g], accuracy[g])
            for g in groups.values()
            if len(g) > 1 and len(set(H[g, axis])) > 1
        ]
        per_axis[axis] = float(np.mean(taus)) if taus else float("nan")
    finite = [v for v in per_axis.values() if np.isfinite(v)]
    return (float(np.mean(finite)) if finite else float("nan")), per_axis


__all__ = [
    "global_max_pool",
    "granulated_kendall",
    "kendall_tau",
    "intraclass_c1",
    "intraclass_c2",
    "intraclass_c3",
    "intraclass_c4",
]
