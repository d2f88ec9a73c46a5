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
    expected_mutual_information,
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
    assert expected_mutual_information([2, 2], [2, 2]) == pytest.approx(np.log(2) / 3)


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
    assert streamed.bytes_read == X.nbytes


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
