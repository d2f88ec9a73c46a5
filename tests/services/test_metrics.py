import numpy as np
import pytest
from sklearn import metrics as skm

from services.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    contingency_matrix,
    ncc_accuracy,
    normalized_mutual_info_score,
    purity_score,
)

PAIRS = [
    (adjusted_rand_score, skm.adjusted_rand_score),
    (adjusted_mutual_info_score, skm.adjusted_mutual_info_score),
    (normalized_mutual_info_score, skm.normalized_mutual_info_score),
]


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("n, r, c", [(10, 2, 3), (500, 7, 20), (3000, 50, 5)])
@pytest.mark.parametrize("seed", range(3))
def test_parity_with_sklearn(ours, theirs, n, r, c, seed):
    rng = np.random.RandomState(seed)
    a, b = rng.randint(r, size=n), rng.randint(c, size=n)
    assert abs(ours(a, b) - theirs(a, b)) < 1e-12


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize(
    "a, b",
    [
        ([0, 0, 1, 1], [5, 5, 9, 9]),  # identical up to names
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # one cluster each
        ([0, 1, 2, 3], [0, 0, 0, 0]),
        (["cat", "dog", "dog"], [7, 3, 3]),  # string labels
    ],
)
def test_edge_cases_like_sklearn(ours, theirs, a, b):
    assert ours(a, b) == pytest.approx(theirs(a, b))


def test_purity_by_hand():
    # clusters: {0,0,1} -> 2 right, {1,2} -> 1 right, {2} -> 1 right: 4 / 6
    assert purity_score([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2]) == pytest.approx(4 / 6)
    assert purity_score([0, 1, 2], [0, 0, 0]) == pytest.approx(1 / 3)
    assert purity_score([0, 1, 2], [4, 5, 6]) == 1.0


def test_contingency_matrix_matches_sklearn():
    a, b = np.array([3, 3, 1, 1, 9]), np.array(["x", "y", "y", "y", "x"])
    np.testing.assert_array_equal(contingency_matrix(a, b), skm.cluster.contingency_matrix(a, b))


def test_ncc_accuracy_by_hand():
    X_train = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    y_train = np.array([0, 0, 1, 1])  # means (0, 1) and (10, 1)
    X_test = np.array([[1.0, 1.0], [9.0, 1.0], [4.0, 1.0], [6.0, 1.0]])
    assert ncc_accuracy(X_train, y_train, X_test, np.array([0, 1, 1, 1])) == 0.75
    assert ncc_accuracy(X_train, y_train) == 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: adjusted_rand_score([0, 1], [0, 1, 1]), "same samples"),
        (lambda: purity_score([0.0, np.nan], [0, 1]), "NaN"),
        (lambda: ncc_accuracy(np.array([[np.nan, 1.0]]), np.array([0])), "NaN or Inf"),
        (lambda: ncc_accuracy(np.ones((2, 2)), [0, 1], np.ones((2, 3)), [0, 1]), "same layer"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
