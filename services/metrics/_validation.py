"""Input checks shared by the metric functions."""

from __future__ import annotations

import warnings

import numpy as np


def as_numpy(array) -> np.ndarray:
    """A NumPy view or copy of ``array``: NumPy, lists, torch tensors (any device), CuPy arrays."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch.Tensor
        return array.detach().cpu().numpy()
    if type(array).__module__.split(".")[0] == "cupy":
        return array.get()
    return np.asarray(array)


def check_labelings(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-d label arrays of equal length (any hashable dtype), as NumPy arrays.

    Warns (``UserWarning``, as scikit-learn's ``check_clusterings``) when a labeling holds
    non-integer floats: those look like measurements, not cluster ids.
    """
    labels_true, labels_pred = as_numpy(labels_true), as_numpy(labels_pred)
    continuous = []
    for name, labels in (("labels_true", labels_true), ("labels_pred", labels_pred)):
        if labels.ndim != 1:
            raise ValueError(f"{name} should be 1-d, got shape {labels.shape}")
        if labels.dtype.kind == "f":
            if not np.isfinite(labels).all():
                raise ValueError(f"{name} contains NaN or Inf; labels must be finite")
            if (labels != np.round(labels)).any():
                continuous.append(name)
    if continuous:
        warnings.warn(
            f"{' and '.join(continuous)} hold continuous values, each distinct value "
            "counted as a label; pass discrete cluster ids",
            UserWarning,
            stacklevel=3,
        )
    if labels_true.shape[0] != labels_pred.shape[0]:
        raise ValueError(
            f"labels_true has {labels_true.shape[0]} samples but labels_pred has "
            f"{labels_pred.shape[0]}; pass labelings of the same samples"
        )
    return labels_true, labels_pred


def check_embeddings(X, y, name: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """A finite float (n, d) array and n labels."""
    X, y = as_numpy(X).astype(np.float64, copy=False), as_numpy(y)
    if X.ndim != 2:
        raise ValueError(f"{name} should be 2-d (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or Inf; clean the embeddings first")
    if y.shape != (X.shape[0],):
        raise ValueError(f"{name} has {X.shape[0]} rows but its labels have shape {y.shape}")
    return X, y
