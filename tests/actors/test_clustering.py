import os

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import pdist
from sklearn import cluster as skc
from sklearn.metrics import adjusted_rand_score

from actors.clustering import (
    AgglomerativeClustering,
    KMeans,
    cluster_for_ks,
    condensed_euclidean,
    cut_linkage,
    l2_normalize,
    select_backend,
)
from actors.clustering.torch_ward import ward_linkage


def blobs(n=200, d=8, centres=5, seed=0):
    rng = np.random.RandomState(seed)
    means = rng.randn(centres, d) * 4
    return means[rng.randint(centres, size=n)] + rng.randn(n, d)


@pytest.mark.parametrize("linkage", ["ward", "average", "complete", "single"])
@pytest.mark.parametrize("n, d", [(50, 3), (300, 16)])
def test_every_k_from_one_fit_matches_sklearn(linkage, n, d):
    X = np.random.RandomState(n + d).randn(n, d)
    model = AgglomerativeClustering(2, linkage=linkage).fit(X)
    for k in (1, 2, 7, n // 3, n):
        expected = skc.AgglomerativeClustering(k, linkage=linkage).fit_predict(X)
        assert adjusted_rand_score(expected, model.labels_for(k)) == 1.0
        assert len(np.unique(model.labels_for(k))) == k


def test_cut_of_a_hand_built_dendrogram():
    # merges: (0,1) -> 4, (2,3) -> 5, (4,5) -> 6
    Z = np.array([[0, 1, 1.0, 2], [2, 3, 2.0, 2], [4, 5, 3.0, 4]])
    np.testing.assert_array_equal(cut_linkage(Z, 2), [0, 0, 1, 1])
    np.testing.assert_array_equal(cut_linkage(Z, 3), [0, 0, 1, 2])
    np.testing.assert_array_equal(cut_linkage(Z, 1), [0, 0, 0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_is_seeded_and_finds_clear_blobs(dtype):
    X = blobs().astype(dtype)
    a = KMeans(5, random_state=3).fit_predict(X)
    b = KMeans(5, random_state=3).fit_predict(X)
    np.testing.assert_array_equal(a, b)
    truth = AgglomerativeClustering(5).fit_predict(X)
    assert adjusted_rand_score(truth, a) > 0.95


def test_cluster_for_ks_is_deterministic():
    X = blobs()
    first = cluster_for_ks(X, "ward", [5, 10])
    second = cluster_for_ks(X, "ward", [5, 10])
    for k in (5, 10):
        np.testing.assert_array_equal(first[k], second[k])
        assert len(np.unique(first[k])) == k


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: AgglomerativeClustering(10).fit(np.zeros((5, 2))),
            "n_samples=5 should be >= n_clusters=10",
        ),
        (lambda: AgglomerativeClustering(2).fit(np.array([[0.0, np.nan], [1, 1]])), "NaN or Inf"),
        (
            lambda: AgglomerativeClustering(2, linkage="median").fit(np.zeros((5, 2))),
            "unknown linkage",
        ),
        (lambda: KMeans(0).fit(np.zeros((5, 2))), "positive integer"),
        (lambda: KMeans(2).fit(np.zeros(5)), "2-d array"),
        (lambda: AgglomerativeClustering(2).fit(np.zeros((5, 0))), "no features"),
        (lambda: cluster_for_ks(np.zeros((5, 2)), "dbscan", [2]), "unknown clustering method"),
        (lambda: select_backend("cuml-nope", method="ward"), "unknown clustering backend"),
        (lambda: select_backend("torch", method="average"), "does not run 'average'"),
        (lambda: select_backend("sklearn", method="ward"), "does not run 'ward'"),
        (lambda: AgglomerativeClustering(2, backend="torch").fit(np.zeros((1, 2))), "n_samples=1"),
    ],
)
def test_bad_input_raises_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_l2_normalize():
    X = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(X), [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("n, d", [(2, 3), (40, 2), (500, 32), (1200, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_rows", [128, None])  # None: blocks shrink towards the end
def test_gemm_distances_equal_pdist(n, d, dtype, block_rows):
    X = np.random.RandomState(n).randn(n, d).astype(dtype)
    np.testing.assert_allclose(
        condensed_euclidean(X, block_rows=block_rows),
        pdist(X.astype(np.float64)),
        rtol=1e-10,
        atol=1e-12,
    )


_PEAK_CHILD = """
import numpy as np
from actors.clustering import condensed_euclidean

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

X = np.random.RandomState(0).randn(6000, 64).astype(np.float32)
a = np.ones((2048, 512))
a @ a.T  # OpenBLAS touches its packing buffer (~6 MiB, once per process) here, not below
del a
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark
before = kib("VmRSS")
D = condensed_euclidean(X)
print((kib("VmHWM") - before) * 1024 / D.nbytes)
"""


@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="reads peak RSS from Linux's /proc"
)
def test_distance_peak_memory_is_the_output_alone():
    """The scratch tiles fit in the part of the output not yet written (the old code
    held a 32 MiB tile and malloc's retained copies on top of the output: 1.44x here)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD], capture_output=True, text=True, cwd=root, check=True
    )
    peak_over_output = float(child.stdout.strip())
    assert peak_over_output < 1.03, f"peak was {peak_over_output:.3f}x the distance vector"


def mixture(n, d, seed):
    rng = np.random.RandomState(seed)
    centres = rng.randn(max(2, n // 50), d) * 3
    return (centres[rng.randint(len(centres), size=n)] + rng.randn(n, d)).astype(np.float32)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("n, d, seed", [(30, 2, 0), (400, 16, 1), (1500, 64, 2)])
def test_ward_backends_reproduce_scipy(backend, n, d, seed):
    X = mixture(n, d, seed)
    reference = scipy_linkage(X.astype(np.float64), "ward")
    model = AgglomerativeClustering(5, backend=backend).fit(X)
    assert model.backend_ == backend
    np.testing.assert_allclose(model.linkage_matrix_[:, 2], reference[:, 2], rtol=1e-9)
    for k in (2, 5, n // 10, n // 2):
        assert adjusted_rand_score(cut_linkage(reference, k), model.labels_for(k)) == 1.0


def test_torch_ward_blocks_do_not_change_the_result():
    X = mixture(300, 8, 3)
    small, large = ward_linkage(X, block_rows=7), ward_linkage(X, block_rows=4096)
    np.testing.assert_array_equal(small[:, [0, 1, 3]], large[:, [0, 1, 3]])
    np.testing.assert_allclose(small[:, 2], large[:, 2], rtol=1e-12)


def test_torch_ward_accepts_tensors():
    torch = pytest.importorskip("torch")
    X = mixture(200, 4, 4)
    np.testing.assert_allclose(ward_linkage(torch.from_numpy(X)), ward_linkage(X))


def test_auto_backend_is_cpu_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert select_backend("auto", method="ward") == "scipy"
    assert select_backend("auto", method="kmeans") == "sklearn"


def test_asking_for_cuml_without_it_names_the_fix():
    try:
        import cuml  # noqa: F401

        pytest.skip("cuML is installed")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="needs RAPIDS cuML"):
        select_backend("cuml", method="kmeans")


@pytest.mark.gpu
def test_torch_ward_on_cuda_matches_scipy():
    X = mixture(3000, 32, 5)
    reference = scipy_linkage(X.astype(np.float64), "ward")
    Z = ward_linkage(X, device="cuda")
    assert adjusted_rand_score(cut_linkage(reference, 100), cut_linkage(Z, 100)) == 1.0


@pytest.mark.parametrize("method", ["ward", "average", "complete", "single"])
@pytest.mark.parametrize("n", [2, 3, 200])
def test_in_place_nn_chain_reproduces_scipy_linkage(method, n):
    from actors.clustering.distances import condensed_euclidean
    from actors.clustering.nn_chain import nn_chain_linkage

    X = np.random.RandomState(n).randn(n, 7)
    ours = nn_chain_linkage(condensed_euclidean(X), n, method)
    reference = scipy_linkage(X, method)
    np.testing.assert_array_equal(ours[:, [0, 1, 3]], reference[:, [0, 1, 3]])
    np.testing.assert_allclose(ours[:, 2], reference[:, 2], rtol=1e-12)


def test_available_memory_is_capped_by_the_cgroup(tmp_path):
    from actors.clustering.memory import available_memory_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("8589934592\n")  # an 8 GiB pod
    usage.write_text("1073741824\n")
    cgroup = ((str(limit), str(usage)),)
    assert available_memory_bytes(str(meminfo), cgroup) == 7 << 30
    limit.write_text("max\n")  # no limit: the machine's figure
    assert available_memory_bytes(str(meminfo), cgroup) == 20000000 * 1024
    assert available_memory_bytes(str(tmp_path / "missing"), cgroup) is None


# How far the machine's free memory may move between two reads a few microseconds apart.
MEMORY_DRIFT_BYTES = 256 << 20


def _memory_available_now() -> int:
    """MemAvailable in bytes, capped by the cgroup's limit less its usage: read here,
    independently of actors.clustering.memory."""
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    available = kib * 1024
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                cap, used = limit.read().strip(), usage.read().strip()
        except OSError:
            continue
        if cap.isdigit():
            return min(available, max(0, int(cap) - int(used)))
    return available


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads Linux's /proc/meminfo")
def test_available_memory_of_this_machine():
    from actors.clustering.memory import available_memory_bytes

    before = _memory_available_now()
    available = available_memory_bytes()
    after = _memory_available_now()
    low, high = min(before, after), max(before, after)
    assert low - MEMORY_DRIFT_BYTES <= available <= high + MEMORY_DRIFT_BYTES


def test_distances_past_the_memory_budget(monkeypatch):
    """Ward and single switch to the O(n d) vector method (same dendrogram); average and
    complete, which have none, raise one clear MemoryError."""
    from actors.clustering import estimators

    X = blobs(n=120, d=6, seed=3)
    expected = {m: AgglomerativeClustering(4, linkage=m).fit_predict(X) for m in ("ward", "single")}
    monkeypatch.setattr(estimators, "CONDENSED_MEMORY_FRACTION", 0.0)
    monkeypatch.setattr(estimators, "FALLBACK_CONDENSED_BUDGET_BYTES", 0)
    monkeypatch.setattr(
        estimators, "condensed_euclidean", lambda X: pytest.fail("built the O(n^2) distances")
    )
    for method, labels in expected.items():
        got = AgglomerativeClustering(4, linkage=method).fit_predict(X)
        assert adjusted_rand_score(labels, got) == 1.0
    with pytest.raises(MemoryError, match="average linkage of 120 points needs"):
        AgglomerativeClustering(4, linkage="average").fit(X)
