"""Linear CKA (plain and debiased) against the Gram-matrix formulas; mutual k-NN by hand."""

import numpy as np
import pytest
import torch

from services.metrics import (
    CKAAccumulator,
    knn_overlap,
    linear_cka,
    mutual_knn_alignment,
    nearest_neighbours,
    streamed_neighbours,
)


def gram_cka(X, Y):
    """Kornblith et al. 2019: HSIC of the doubly centred n x n linear Gram matrices."""
    n = len(X)
    H = np.eye(n) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return (K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum())


def unbiased_hsic(K, L):
    """Song et al. 2012, eq. 5 (uncentred kernels, diagonals zeroed)."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (
        np.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ K @ L @ one
    ) / (n * (n - 3))


def gram_debiased_cka(X, Y):
    K, L = X @ X.T, Y @ Y.T
    return unbiased_hsic(K, L) / np.sqrt(unbiased_hsic(K, K) * unbiased_hsic(L, L))


def related(rng, n=50, dx=7, dy=5, offset=3.0):
    X = rng.normal(size=(n, dx)) + offset
    Y = X @ rng.normal(size=(dx, dy)) + rng.normal(size=(n, dy))
    return X, Y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_cka_matches_the_gram_formula(seed, dtype):
    X, Y = related(np.random.default_rng(seed))
    expected = gram_cka(X, Y)
    got = linear_cka(X.astype(dtype), Y.astype(dtype))
    assert got == pytest.approx(
        gram_cka(X.astype(dtype).astype(float), Y.astype(dtype).astype(float)), rel=1e-9
    )
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_debiased_cka_matches_the_unbiased_hsic_formula(seed):
    X, Y = related(np.random.default_rng(seed), n=30, offset=10.0)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(gram_debiased_cka(X, Y), rel=1e-9)


def test_cka_invariances():
    rng = np.random.default_rng(3)
    X, Y = related(rng)
    Q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    base = linear_cka(X, Y)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(3.5 * X, Y) == pytest.approx(base, rel=1e-9)  # isotropic scaling
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-9)  # orthogonal transform
    assert linear_cka(X + 100.0, Y) == pytest.approx(base, rel=1e-9)  # translation
    assert linear_cka(Y, X) == pytest.approx(base, rel=1e-12)
    debiased = linear_cka(X, Y, debiased=True)
    assert linear_cka(X @ Q * 2.0, Y, debiased=True) == pytest.approx(debiased, rel=1e-9)


def test_accumulator_over_batches_equals_one_shot_for_every_layer_pair():
    rng = np.random.default_rng(4)
    A = [rng.normal(size=(61, d)) + 2.0 for d in (3, 8)]
    B = [A[1] @ rng.normal(size=(8, 4)) + rng.normal(size=(61, 4)), rng.normal(size=(61, 6))]
    acc = CKAAccumulator(2)
    for start in range(0, 61, 17):
        rows = slice(start, start + 17)
        acc.update([[X[rows] for X in A], [Y[rows] for Y in B]])
    for debiased in (False, True):
        got = acc.result(0, 1, debiased=debiased)
        assert got.shape == (2, 2)
        for p, X in enumerate(A):
            for q, Y in enumerate(B):
                assert got[p, q] == pytest.approx(linear_cka(X, Y, debiased=debiased), rel=1e-9)


def test_accumulator_three_runs_shares_each_runs_moments():
    rng = np.random.default_rng(5)
    runs = [[rng.normal(size=(40, 5))] for _ in range(3)]
    acc = CKAAccumulator(3, pairs=[(0, 2), (1, 2)])
    acc.update(runs)
    assert acc.result(1, 2)[0, 0] == pytest.approx(linear_cka(runs[1][0], runs[2][0]), rel=1e-9)
    with pytest.raises(ValueError, match="not among the accumulated pairs"):
        acc.result(0, 1)


def test_torch_and_numpy_inputs_agree():
    X, Y = related(np.random.default_rng(6))
    as_torch = linear_cka(torch.from_numpy(X), torch.from_numpy(Y))
    assert as_torch == pytest.approx(linear_cka(X, Y), rel=1e-12)
    assert mutual_knn_alignment(torch.from_numpy(X), torch.from_numpy(Y), k=4) == (
        mutual_knn_alignment(X, Y, k=4)
    )


def test_bad_inputs_are_refused_with_one_sentence():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(X, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-d"):
        linear_cka(np.zeros(5), X)
    with pytest.raises(ValueError, match="n_samples >= 4"):
        linear_cka(X[:3], X[:3], debiased=True)
    with pytest.raises(ValueError, match="k=5"):
        mutual_knn_alignment(X, X, k=5)
    assert np.isnan(linear_cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2))))


def test_nearest_neighbours_by_cosine_on_a_hand_case():
    # four directions on the unit circle: 0 deg, 10 deg, 90 deg, 100 deg (lengths do not matter)
    angles = np.deg2rad([0, 10, 90, 100])
    X = np.c_[np.cos(angles), np.sin(angles)] * np.array([[1.0], [5.0], [0.2], [3.0]])
    assert nearest_neighbours(X, k=1).ravel().tolist() == [1, 0, 3, 2]
    assert nearest_neighbours(X, k=2).tolist() == [[1, 2], [0, 2], [1, 3], [1, 2]]


def test_mutual_knn_on_hand_cases():
    angles = np.deg2rad([0, 10, 90, 100])
    X = np.c_[np.cos(angles), np.sin(angles)]
    # Y pairs 0 with 2 and 1 with 3 instead: no 1-nearest neighbour is shared
    Y = np.c_[np.cos(np.deg2rad([0, 90, 10, 100])), np.sin(np.deg2rad([0, 90, 10, 100]))]
    assert mutual_knn_alignment(X, X * 7.0, k=1) == 1.0
    assert mutual_knn_alignment(X, Y, k=1) == 0.0
    assert knn_overlap(np.array([[1, 2], [0, 3]]), np.array([[2, 3], [0, 3]])) == 0.75


@pytest.mark.parametrize("query_rows", [1000, 64, 7])  # one scan; 5 and 30 query blocks
def test_streamed_neighbours_equal_the_in_memory_search(query_rows):
    X = np.random.default_rng(3).normal(size=(203, 6)).astype(np.float32)
    scans = []

    def read():
        scans.append(1)
        return (X[i : i + 50] for i in range(0, len(X), 50))  # batches not aligned to blocks

    found = streamed_neighbours(read, len(X), k=4, query_bytes=query_rows * 6 * 8)
    assert np.array_equal(found, nearest_neighbours(X, k=4))
    assert len(scans) == (1 if query_rows >= len(X) else -(-len(X) // query_rows) + 1)


def test_streamed_neighbours_refuse_a_stream_of_another_length():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="holds 20 rows, expected n=21"):
        streamed_neighbours(lambda: iter([X]), 21, k=2, query_bytes=8 * 3 * 5)
