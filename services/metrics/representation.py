"""Measures of a representation against class labels (no clustering involved)."""

from __future__ import annotations

import numpy as np

from services.metrics._validation import check_embeddings


def class_means(X, y) -> tuple[np.ndarray, np.ndarray]:
    """Sorted class ids and their mean vectors, float64 (n_classes, d)."""
    X, y = check_embeddings(X, y)
    classes, inverse = np.unique(y, return_inverse=True)
    sums = np.zeros((len(classes), X.shape[1]))
    np.add.at(sums, inverse, X)
    return classes, sums / np.bincount(inverse)[:, None]


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
    distances = (X_test**2).sum(1)[:, None] - 2 * X_test @ means.T + (means**2).sum(1)[None, :]
    return float((classes[distances.argmin(axis=1)] == y_test).mean())
