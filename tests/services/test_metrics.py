from math import comb, log

import numpy as np
import pytest
from sklearn import metrics as skm

from services.metrics import (
    ClassStatistics,
    adjusted_mutual_info_score,
    adjusted_rand_score,
    cdnv,
    class_distance_matrix,
    cluster_and_linear_probe,
    clustering_scores,
    completeness_score,
    contingency_matrix,
    expected_mutual_information_from_sizes,
    fowlkes_mallows_score,
    granulated_kendall,
    homogeneity_score,
    intraclass_c1,
    intraclass_c2,
    intraclass_c3,
    intraclass_c4,
    linear_probe_accuracy,
    mutual_info_score,
    nc1,
    nc2,
    ncc_accuracy,
    normalized_mutual_info_score,
    pairwise_scores,
    purity_score,
    silhouette_score,
    v_measure_score,
)
from services.metrics._emi import emi_size_table
from services.metrics.clustering import encode

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


# -- the wider sklearn family, all from one contingency table ------------------------

MORE_PAIRS = [
    (homogeneity_score, skm.homogeneity_score),
    (completeness_score, skm.completeness_score),
    (v_measure_score, skm.v_measure_score),
    (fowlkes_mallows_score, skm.fowlkes_mallows_score),
    (mutual_info_score, skm.mutual_info_score),
]


@pytest.mark.parametrize("ours, theirs", MORE_PAIRS)
@pytest.mark.parametrize("n, r, c", [(10, 2, 3), (500, 7, 20), (2000, 40, 40)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_more_parity_with_sklearn(ours, theirs, n, r, c, dtype):
    rng = np.random.RandomState(n + r)
    a, b = rng.randint(r, size=n).astype(dtype), rng.randint(c, size=n).astype(dtype)
    assert abs(ours(a, b) - theirs(a, b)) < 1e-12


@pytest.mark.parametrize("method", ["arithmetic", "geometric", "min", "max"])
@pytest.mark.parametrize("seed", range(4))
def test_ami_average_methods_match_sklearn(method, seed):
    rng = np.random.RandomState(seed)
    a = rng.randint(30, size=4000)
    b = (a + rng.randint(3, size=4000)) % 25  # correlated, so AMI is far from 0
    ours = adjusted_mutual_info_score(a, b, average_method=method)
    assert abs(ours - skm.adjusted_mutual_info_score(a, b, average_method=method)) < 1e-9


def test_ami_with_skewed_cluster_sizes_matches_sklearn():
    rng = np.random.RandomState(0)
    a = np.minimum(rng.zipf(1.3, size=20000), 500)
    b = np.minimum(rng.zipf(1.6, size=20000), 800)
    assert abs(adjusted_mutual_info_score(a, b) - skm.adjusted_mutual_info_score(a, b)) < 1e-9


def test_large_n_has_no_integer_overflow():
    n = 300_000  # n^2 / 2 overflows int32
    a = np.repeat([0, 1], n // 2)
    b = np.tile([0, 1], n // 2)
    assert adjusted_rand_score(a, b) == pytest.approx(skm.adjusted_rand_score(a, b))
    assert fowlkes_mallows_score(a, a) == 1.0


def test_expected_mutual_information_by_enumeration():
    # 4 samples, sizes (2, 2) x (2, 2): n_11 is 0, 1 or 2 with probabilities 1/6, 4/6, 1/6
    # MI contributions: n_ij = 1 -> (1/4) log(4*1/4) = 0; n_ij = 2 -> (2/4) log(4*2/4) = log(2)/2
    # Each of the 4 cells is 2 with probability 1/6: EMI = 4 * (1/6) * log(2) / 2
    assert expected_mutual_information_from_sizes([2, 2], [2, 2]) == pytest.approx(np.log(2) / 3)


def lognormal_labels(rng, n: int, k: int, sigma: float = 1.5) -> np.ndarray:
    """Labels whose cluster sizes are skewed like clusterings of real embeddings."""
    weights = rng.lognormal(0, sigma, k)
    return rng.choice(k, size=n, p=weights / weights.sum())


def emi_by_definition(sizes_a, sizes_b, n: int) -> float:
    """EMI summed over every cell and every count of its support, with exact binomials."""
    total = 0.0
    for a in sizes_a:
        for b in sizes_b:
            for k in range(max(1, a + b - n), min(a, b) + 1):
                pmf = comb(a, k) * comb(n - a, b - k) / comb(n, b)
                total += pmf * k / n * log(n * k / (a * b))
    return total


@pytest.mark.parametrize("seed", range(20))
def test_ami_with_lognormal_sizes_matches_sklearn(seed):
    rng = np.random.RandomState(seed)
    n = int(rng.choice([200, 3000, 8000]))
    a = lognormal_labels(rng, n, int(rng.randint(2, 400)))
    b = lognormal_labels(rng, n, int(rng.randint(2, 400)))
    b = np.where(rng.rand(n) < 0.5, b, a)  # correlated half the time, so AMI is not ~0
    for x, y in ((a, b), (a, lognormal_labels(rng, n, 50, sigma=3.0))):
        assert abs(adjusted_mutual_info_score(x, y) - skm.adjusted_mutual_info_score(x, y)) <= 1e-9


@pytest.mark.parametrize(
    "a, b",
    [
        (np.repeat(np.arange(40), 25), np.tile(np.arange(50), 20)),  # every size tied
        (np.zeros(500, int), np.arange(500) % 7),  # a single class
        (np.arange(300), np.arange(300) // 3),  # all singletons
        (np.arange(300), np.arange(300)[::-1]),  # singletons both sides
        (np.r_[np.zeros(990, int), np.arange(1, 11)], np.arange(1000) % 2),  # one giant class
        ([0, 0, 0, 1], [0, 0, 0, 1]),  # a + b > N: the support starts above 1
    ],
)
def test_ami_edge_sizes_match_sklearn(a, b):
    assert abs(adjusted_mutual_info_score(a, b) - skm.adjusted_mutual_info_score(a, b)) <= 1e-9
    assert abs(adjusted_mutual_info_score(b, a) - skm.adjusted_mutual_info_score(b, a)) <= 1e-9


def test_expected_mutual_information_when_sizes_overlap_by_hand():
    # N = 4, sizes (3, 1) x (3, 1). n_11 is 2 or 3 with probabilities 3/4, 1/4.
    # n_11 = 3 is the table [[3, 0], [0, 1]]: MI = 3/4 log(4/3) + 1/4 log(4) (prob. 1/4);
    # n_11 = 2 is [[2, 1], [1, 0]]: MI = 2/4 log(8/9) + 2 * 1/4 log(4/3) (prob. 3/4).
    mi_3 = 0.75 * log(4 / 3) + 0.25 * log(4)
    mi_2 = 0.5 * log(8 / 9) + 0.5 * log(4 / 3)
    assert expected_mutual_information_from_sizes([3, 1], [3, 1]) == pytest.approx(
        mi_3 / 4 + 3 * mi_2 / 4
    )


@pytest.mark.parametrize("seed", range(10))
def test_expected_mutual_information_equals_its_definition(seed):
    rng = np.random.RandomState(seed)
    n = int(rng.randint(2, 60))
    sizes_a = np.bincount(lognormal_labels(rng, n, int(rng.randint(1, 12))))
    sizes_b = np.bincount(lognormal_labels(rng, n, int(rng.randint(1, 12))))
    sizes_a, sizes_b = sizes_a[sizes_a > 0].tolist(), sizes_b[sizes_b > 0].tolist()
    expected = emi_by_definition(sizes_a, sizes_b, n) if len(sizes_a) > 1 < len(sizes_b) else 0.0
    assert expected_mutual_information_from_sizes(sizes_a, sizes_b) == pytest.approx(
        expected, abs=1e-13
    )


def test_emi_size_table_equals_the_full_sum_for_wide_supports():
    # sizes up to N / 2: the support is hundreds wide and the terms are summed from the mode out
    n, sizes = 2000, np.array([1, 2, 7, 40, 333, 999, 1000])
    table = emi_size_table(sizes, sizes, n)
    for i, a in enumerate(sizes.tolist()):
        for j, b in enumerate(sizes.tolist()):
            assert table[i, j] == pytest.approx(
                emi_by_definition([a], [b], n), rel=1e-11, abs=1e-17
            )


@pytest.mark.parametrize(
    "labels",
    [
        np.array([5, -3, 5, 0, 7], dtype=np.int8),
        np.array([3, 1, 3, 255], dtype=np.uint8),
        np.array([2**40, 7, 2**40, -(2**50)]),  # too wide a span to count: sorted instead
        np.array([2**63 + 5, 2**63, 2**63 + 5], dtype=np.uint64),
        np.array(["b", "a", "b"]),
        np.array([1.5, -2.0, 1.5]),
    ],
)
def test_encode_codes_labels_in_sorted_order(labels):
    codes, n_labels = encode(labels)
    uniques, expected = np.unique(labels, return_inverse=True)
    np.testing.assert_array_equal(codes, expected)
    assert n_labels == len(uniques)


@pytest.mark.parametrize("n_labels", [3, 2000])  # dense table and sorted cells
def test_contingency_matrix_matches_sklearn_dense_and_sparse(n_labels):
    rng = np.random.RandomState(0)
    a, b = rng.randint(n_labels, size=1000), rng.randint(n_labels, size=1000) - 50
    np.testing.assert_array_equal(contingency_matrix(a, b), skm.cluster.contingency_matrix(a, b))


def test_clustering_scores_bundle():
    scores = clustering_scores([0, 0, 1, 1], [1, 1, 0, 0], ("ami", "purity", "v_measure"))
    assert scores == {"ami": 1.0, "purity": 1.0, "v_measure": 1.0}
    with pytest.raises(ValueError, match="unknown clustering metric"):
        clustering_scores([0], [0], ("accuracy",))


@pytest.mark.parametrize("device", [None, "cpu"])
def test_pairwise_scores_match_sklearn_for_every_pair(device):
    rng = np.random.RandomState(1)
    base = rng.randint(20, size=1500)
    labelings = [
        np.where(rng.rand(1500) < 0.3, rng.randint(20 + k, size=1500), base) for k in range(5)
    ]
    scores = pairwise_scores(labelings, ("ari", "ami", "nmi"), device=device)
    for i in range(5):
        for j in range(5):
            assert scores["ari"][i, j] == pytest.approx(
                skm.adjusted_rand_score(labelings[i], labelings[j]), abs=1e-12
            )
            assert scores["ami"][i, j] == pytest.approx(
                skm.adjusted_mutual_info_score(labelings[i], labelings[j]), abs=1e-9
            )
            assert scores["nmi"][i, j] == pytest.approx(
                skm.normalized_mutual_info_score(labelings[i], labelings[j]), abs=1e-12
            )


def test_pairwise_scores_with_lognormal_sizes_match_sklearn():
    rng = np.random.RandomState(3)
    base = lognormal_labels(rng, 4000, 300)
    labelings = [np.where(rng.rand(4000) < 0.4, lognormal_labels(rng, 4000, 300), base)]
    labelings += [lognormal_labels(rng, 4000, k) for k in (2, 50, 900)]
    scores = pairwise_scores(labelings, ("ari", "ami"))
    for i in range(4):
        for j in range(4):
            ami = skm.adjusted_mutual_info_score(labelings[i], labelings[j])
            assert abs(scores["ami"][i, j] - ami) <= 1e-9


def test_pairwise_scores_bad_input():
    with pytest.raises(ValueError, match="different lengths"):
        pairwise_scores([[0, 1], [0, 1, 1]])


# -- representation measures on tiny data with known answers ---------------------------
ONE_D = np.array([[-1.0], [1.0], [9.0], [11.0]])
TWO_CLASSES = np.array([0, 0, 1, 1])  # means 0 and 10, each with variance 1


def test_cdnv_by_hand():
    assert cdnv(ONE_D, TWO_CLASSES) == pytest.approx((1 + 1) / (2 * 100))


def test_class_statistics_stream_equals_one_batch():
    rng = np.random.RandomState(0)
    X, y = rng.randn(1000, 6).astype(np.float32), rng.randint(4, size=1000)
    streamed = ClassStatistics()
    for lo in range(0, 1000, 128):
        streamed.update(X[lo : lo + 128], y[lo : lo + 128])
    whole = ClassStatistics().update(X, y)
    np.testing.assert_allclose(streamed.means, whole.means)
    np.testing.assert_allclose(streamed.variances, whole.variances, rtol=1e-9)
    np.testing.assert_array_equal(streamed.counts, whole.counts)


def test_nc1_by_hand():
    # S_W = 1, S_B = ((0-5)^2 + (10-5)^2) / 2 = 25: tr(S_W S_B^+) / C = (1/25) / 2
    assert nc1(ONE_D, TWO_CLASSES) == pytest.approx(0.02)


def test_nc2_is_zero_for_a_simplex():
    angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    X = np.repeat(np.stack([np.cos(angles), np.sin(angles)], 1), 4, axis=0)
    y = np.repeat([0, 1, 2], 4)
    assert nc2(X, y) == pytest.approx(0.0, abs=1e-12)
    assert nc2(np.array([[0.0, 0], [1, 0], [0, 5]]), np.array([0, 1, 2])) > 0.1


def test_class_distance_matrix_by_hand():
    X = np.array([[0.0], [3.0], [5.0]])
    classes, D = class_distance_matrix(X, np.array([0, 1, 1]))
    assert list(classes) == [0, 1]
    assert D[0, 1] == pytest.approx((9 + 25) / 2)
    assert D[1, 1] == pytest.approx((0 + 4 + 4 + 0) / 4)


def test_silhouette_matches_sklearn():
    rng = np.random.RandomState(0)
    X, y = rng.randn(100, 4), rng.randint(3, size=100)
    assert silhouette_score(X, y) == pytest.approx(skm.silhouette_score(X, y, metric="cosine"))


def test_intraclass_c1_by_hand():
    # superclass 0 holds subclasses a (values 0, 2) and b (10, 12); neuron 2 mirrors neuron 1.
    # a: neuron 1 gives (1 - 11) / (1 + 1) = -5, neuron 2 gives +5 -> top-1 is 5; b likewise.
    x = np.array([0.0, 2.0, 10.0, 12.0])
    layer = np.stack([x, -x], 1)
    assert intraclass_c1([layer], [0, 0, 1, 1], [0, 0, 0, 0], k=1) == pytest.approx(5.0)


def test_intraclass_c3_by_hand():
    x = np.array([[0.0], [2.0], [10.0], [12.0]])  # std within each class 1, overall sqrt(26)
    assert intraclass_c3([x], [0, 0, 1, 1]) == pytest.approx(1 / np.sqrt(26))


def test_intraclass_c2_and_c4_rank_clustered_subclasses_higher():
    rng = np.random.RandomState(0)
    subclass = np.repeat(np.arange(4), 50)
    superclass = subclass // 2
    centres = rng.randn(4, 8) * 5
    clustered = centres[subclass] + rng.randn(200, 8)
    collapsed = centres[superclass * 2] + rng.randn(200, 8)
    assert (
        intraclass_c2([clustered], subclass, superclass)
        > 0.3
        > intraclass_c2([collapsed], subclass, superclass)
    )
    assert intraclass_c4([clustered], superclass) > intraclass_c4([collapsed], superclass)


def test_granulated_kendall_by_hand():
    # axis 0 (lr): within each batch-size group the measure ranks accuracy perfectly (+1);
    # axis 1 (batch): within each lr group it ranks it backwards (-1). Total (1 - 1) / 2 = 0.
    hyper = [[0.1, 32], [0.2, 32], [0.1, 64], [0.2, 64]]
    accuracy = [0.5, 0.6, 0.7, 0.8]
    measure = [2.0, 3.0, 0.0, 1.0]
    total, per_axis = granulated_kendall(measure, accuracy, hyper)
    assert per_axis == {0: 1.0, 1: -1.0}
    assert total == 0.0


def test_linear_probe_and_clp_on_separable_blobs():
    rng = np.random.RandomState(0)
    fine = np.repeat(np.arange(6), 40)
    coarse = fine // 2  # 3 superclasses of 2 fine classes
    centres = rng.randn(6, 10) * 6
    X = centres[fine] + rng.randn(240, 10)
    X_test = centres[fine] + rng.randn(240, 10)
    assert linear_probe_accuracy(X, fine, X_test, fine) == 1.0
    assert cluster_and_linear_probe(X, coarse, [2, 2, 2], X_test, coarse, fine) == 1.0


def test_torch_tensors_are_accepted_like_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    a, b = rng.randint(5, size=200), rng.randint(7, size=200)
    X = rng.randn(200, 3)
    assert adjusted_mutual_info_score(
        torch.from_numpy(a), torch.from_numpy(b)
    ) == adjusted_mutual_info_score(a, b)
    assert cdnv(torch.from_numpy(X), torch.from_numpy(a)) == pytest.approx(cdnv(X, a))
    assert pairwise_scores([torch.from_numpy(a), b])["ari"][0, 1] == pytest.approx(
        adjusted_rand_score(a, b)
    )


@pytest.mark.gpu
def test_gpu_arrays_and_device_counting_match_cpu():
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    labelings = [rng.randint(50, size=10_000) for _ in range(4)]
    on_gpu = [torch.from_numpy(x).cuda() for x in labelings]
    cpu = pairwise_scores(labelings)
    gpu = pairwise_scores(on_gpu, device="cuda")
    np.testing.assert_allclose(gpu["ami"], cpu["ami"], atol=1e-12)
