"""`stratalens bench cluster`: clustering figures against baselines measured in the same run.

1. Ward, n = 20,000, d = 512, float32 (L2-normalised mixture): stratalens' CPU backend
   (blocked-GEMM distances + SciPy's NN-chain compiled with numba, in place) vs
   ``sklearn.cluster.AgglomerativeClustering(linkage="ward")``: time, labels at k = 100
   (ARI), peak memory. Each contender runs in its own process, so peak RSS is its own.
2. The torch RNN Ward on CPU, n = 5,000, d = 512, vs SciPy's ``linkage(X, "ward")``.
3. With CUDA only: torch Ward at n = 50,000, d = 2,048 on the GPU, and k-means with
   k = 1,000 on 50,000 x 2,048 (cuML when installed, else skipped) vs scikit-learn.
4. With ``--large-n N`` only: Ward in place at n = N, d = 512 (time, peak memory), and
   fastcluster's O(n d) vector method, which it falls back to past half the available
   memory, at N / 5 (at N itself it takes many minutes).

Usage: python benchmarks/bench_cluster.py [--json] [--quick] [--large-n N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from common import parse_args, report  # benchmarks/ is on sys.path
from sklearn.metrics import adjusted_rand_score

# Runs in a child process: fit, then report seconds and peak RSS growth during the fit.
_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    contender, data, out, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    X = np.load(data)
    if contender == "stratalens":
        from actors.clustering import AgglomerativeClustering
        make = lambda k: AgglomerativeClustering(k, backend="scipy").fit_predict
    elif contender == "sklearn":
        from sklearn.cluster import AgglomerativeClustering
        make = lambda k: AgglomerativeClustering(k, linkage="ward").fit_predict
    elif contender == "torch":
        from actors.clustering import AgglomerativeClustering
        make = lambda k: AgglomerativeClustering(k, backend="torch", device="cpu").fit_predict
    elif contender == "vector":
        import fastcluster
        from actors.clustering import cut_linkage
        make = lambda k: lambda Y: cut_linkage(
            fastcluster.linkage_vector(Y.astype(np.float64), "ward"), k)
    elif contender == "scipy":
        from scipy.cluster.hierarchy import linkage
        from actors.clustering import cut_linkage
        make = lambda k: lambda Y: cut_linkage(linkage(Y.astype(np.float64), "ward"), k)
    make(2)(X[:50])  # warm up: lazy imports and first-call costs are not the fit's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark, so the peak below is the fit's own
    before = status_kib("VmRSS")
    start = time.perf_counter()
    labels = make(k)(X)
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    np.save(out, labels)
    print(json.dumps({"seconds": seconds, "peak_extra_mib": (peak - before) / 1024}))
    """
)


def mixture(n: int, d: int, seed: int = 0) -> np.ndarray:
    """L2-normalised Gaussian mixture, float32 (the shape of normalised embeddings)."""
    rng = np.random.RandomState(seed)
    centres = rng.randn(max(2, n // 100), d)
    X = centres[rng.randint(len(centres), size=n)] + rng.randn(n, d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


def run_child(contender: str, X: np.ndarray, k: int, workdir: Path) -> tuple[dict, np.ndarray]:
    data, out = workdir / "X.npy", workdir / f"{contender}.npy"
    np.save(data, X)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, contender, str(data), str(out), str(k)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(out)


def bench_ward_vs_sklearn(n: int, d: int, k: int, workdir: Path) -> dict:
    X = mixture(n, d)
    ours, ours_labels = run_child("stratalens", X, k, workdir)
    theirs, their_labels = run_child("sklearn", X, k, workdir)
    return {
        "ward_n": n,
        "ward_d": d,
        "ward_seconds": ours["seconds"],
        "ward_sklearn_seconds": theirs["seconds"],
        "ward_speedup": theirs["seconds"] / ours["seconds"],
        "ward_ari_vs_sklearn": adjusted_rand_score(their_labels, ours_labels),
        "ward_peak_extra_mib": ours["peak_extra_mib"],
        "ward_sklearn_peak_extra_mib": theirs["peak_extra_mib"],
        "ward_memory_ratio": ours["peak_extra_mib"] / theirs["peak_extra_mib"],
    }


def bench_torch_ward_cpu(n: int, d: int, k: int, workdir: Path) -> dict:
    X = mixture(n, d, seed=1)
    ours, ours_labels = run_child("torch", X, k, workdir)
    ref, ref_labels = run_child("scipy", X, k, workdir)
    return {
        "torch_ward_cpu_n": n,
        "torch_ward_cpu_seconds": ours["seconds"],
        "scipy_ward_seconds": ref["seconds"],
        "torch_ward_cpu_ari_vs_scipy": adjusted_rand_score(ref_labels, ours_labels),
    }


def bench_large_ward(n: int, d: int, k: int, workdir: Path) -> dict:
    X = mixture(n, d, seed=2)
    ours, _ = run_child("stratalens", X, k, workdir)
    vector, _ = run_child("vector", X[: n // 5], k, workdir)
    return {
        "large_ward_n": n,
        "large_ward_seconds": ours["seconds"],
        "large_ward_peak_extra_mib": ours["peak_extra_mib"],
        "vector_ward_n": n // 5,
        "vector_ward_seconds": vector["seconds"],
    }


def bench_gpu(quick: bool) -> dict:  # pragma: no cover - needs CUDA
    import time

    import torch

    from actors.clustering import cut_linkage
    from actors.clustering.backends import cuml_available
    from actors.clustering.torch_ward import ward_linkage

    n, d = (5_000, 256) if quick else (50_000, 2_048)
    X = mixture(n, d, seed=2)
    torch.cuda.synchronize()
    start = time.perf_counter()
    Z = ward_linkage(X, device="cuda")
    results = {"gpu_ward_n": n, "gpu_ward_d": d, "gpu_ward_seconds": time.perf_counter() - start}
    results["gpu_ward_clusters_at_100"] = int(len(np.unique(cut_linkage(Z, 100))))
    if cuml_available():
        from sklearn.cluster import KMeans as SkKMeans

        from actors.clustering import KMeans

        k = 100 if quick else 1_000
        start = time.perf_counter()
        KMeans(k, backend="cuml", n_init=1).fit(X)
        results["gpu_kmeans_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        SkKMeans(k, n_init=1, random_state=0).fit(X)
        results["sklearn_kmeans_seconds"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, large_n=0)
    import torch

    with tempfile.TemporaryDirectory(prefix="stratalens-bench-") as tmp:
        workdir = Path(tmp)
        if args.quick:
            results = bench_ward_vs_sklearn(2_000, 64, 100, workdir)
            results |= bench_torch_ward_cpu(500, 64, 50, workdir)
        else:
            results = bench_ward_vs_sklearn(20_000, 512, 100, workdir)
            results |= bench_torch_ward_cpu(5_000, 512, 100, workdir)
        if args.large_n:
            results |= bench_large_ward(args.large_n, 512, 100, workdir)
    results["cuda"] = torch.cuda.is_available()
    if results["cuda"]:
        results |= bench_gpu(args.quick)
    return report(results, args.json)


if __name__ == "__main__":
    main()
