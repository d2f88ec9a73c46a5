"""`stratalens bench metrics`: metrics figures as ratios against baselines measured in the same run.

Labels: N = 50,000 samples drawn i.i.d. over k = 1,000 clusters with three size
distributions (the cost of the expected mutual information grows with the number of
distinct cluster sizes, so all three are measured):
- ``uniform``: equal probabilities (~45 distinct sizes, the easy case);
- ``lognormal``: probabilities lognormal with sigma 1.5 (~190 distinct sizes);
- ``ward``: the cluster sizes of a Ward clustering (SciPy) into k clusters of
  ``WARD_SAMPLES`` Gaussian-mixture embeddings, as clusterings of real embeddings are
  skewed (many small clusters, a few large ones).

1. AMI between two such labelings (each a noisy copy of one base labeling) vs
   ``sklearn.metrics.adjusted_mutual_info_score``.
2. All-pairs ARI + AMI among ``--labelings`` labelings (default 8: 28 pairs) vs a loop of
   scikit-learn calls over the same pairs; all values are compared.
3. NCC + CDNV for 48 layer x seed embeddings (50,000 x 512 float32 each, stored in Lance):
   one pass over each table (train rows once for class statistics, test rows once for
   NCC) vs reading the whole table into NumPy first. Both start with the tables' pages
   evicted from the page cache (``posix_fadvise(DONTNEED)`` on their files, which leaves
   other processes' cache alone), and the bytes read are this process's storage reads
   (``read_bytes`` of /proc/self/io); ``rchar`` (bytes returned by read calls, cached
   or not) is reported beside it and used instead where an eviction did not take (fewer
   bytes read from storage than the embeddings hold).

Every contender is timed the same way: the best of ``--repeats`` runs (default 3), after
one untimed call of each on tiny labels at the start (numba's cache load or compile,
reported as ``first_call_seconds``); speedups are baseline time over ours.

Usage: python benchmarks/bench_metrics.py [--json] [--quick] [--repeats R] [--labelings M]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
from common import parse_args, report  # benchmarks/ is on sys.path
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn import metrics as skm

from services.metrics import (
    ClassStatistics,
    adjusted_mutual_info_score,
    cdnv_from_statistics,
    nearest_class_mean,
    pairwise_scores,
)
from storage import EmbeddingStore, embedding_matrix

DISTRIBUTIONS = ("uniform", "lognormal", "ward")
LOGNORMAL_SIGMA = 1.5
WARD_SAMPLES = 10_000  # Ward (SciPy, O(n^2) memory) runs on these many embeddings
WARD_DIM = 32
WARD_CLUSTERS_PER_COMPONENT = 10  # k clusters cut k / 10 Gaussian-mixture components
AMI_NOISE = 0.5  # fraction of samples relabelled at random in each labeling
PAIRS_NOISE = 0.4
BATCH_ROWS = 8192


def best_of(fn, repeats: int):
    """Best wall time of ``repeats`` calls of ``fn``, and its value."""
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


# -- label size distributions ---------------------------------------------------------
def ward_proportions(k: int, n_samples: int, seed: int = 4) -> np.ndarray:
    """Cluster proportions of a Ward clustering into ``k`` clusters of Gaussian-mixture points."""
    rng = np.random.RandomState(seed)
    components = k // WARD_CLUSTERS_PER_COMPONENT
    component = rng.randint(components, size=n_samples)
    centres = rng.randn(components, WARD_DIM) * 3
    spread = rng.lognormal(0, 0.5, components)  # components of different widths
    X = centres[component] + rng.randn(n_samples, WARD_DIM) * spread[component, None]
    labels = fcluster(linkage(X, "ward"), k, criterion="maxclust")
    sizes = np.bincount(labels)[1:]
    return sizes / sizes.sum()


def proportions(distribution: str, k: int, ward_samples: int, seed: int = 0) -> np.ndarray:
    """Probabilities of the ``k`` clusters: float64 (k,), summing to 1."""
    if distribution == "uniform":
        return np.full(k, 1 / k)
    if distribution == "lognormal":
        weights = np.random.RandomState(seed).lognormal(0, LOGNORMAL_SIGMA, k)
        return weights / weights.sum()
    return ward_proportions(k, ward_samples)


def noisy_copies(p: np.ndarray, n: int, copies: int, noise: float, seed: int) -> list[np.ndarray]:
    """Labelings drawn from ``p`` that agree with one base labeling except for ``noise`` of it."""
    rng = np.random.RandomState(seed)
    base = rng.choice(len(p), size=n, p=p)
    return [
        np.where(rng.rand(n) < noise, rng.choice(len(p), size=n, p=p), base) for _ in range(copies)
    ]


def bench_ami(name: str, p: np.ndarray, n: int, repeats: int) -> dict:
    a, b = noisy_copies(p, n, 2, AMI_NOISE, seed=0)
    ours_s, ours = best_of(lambda: adjusted_mutual_info_score(a, b), repeats)
    sk_s, theirs = best_of(lambda: skm.adjusted_mutual_info_score(a, b), repeats)
    return {
        f"{name}_distinct_sizes": len(np.unique(np.bincount(a))),
        f"{name}_largest_cluster": int(np.bincount(a).max()),
        f"{name}_ami_seconds": ours_s,
        f"{name}_ami_sklearn_seconds": sk_s,
        f"{name}_ami_speedup": sk_s / ours_s,
        f"{name}_ami_abs_diff": abs(ours - theirs),
    }


def sklearn_pairs(labelings: list[np.ndarray]) -> dict[tuple[int, int], tuple[float, float]]:
    """(ARI, AMI) of every pair i < j, one scikit-learn call each."""
    return {
        (i, j): (
            skm.adjusted_rand_score(labelings[i], labelings[j]),
            skm.adjusted_mutual_info_score(labelings[i], labelings[j]),
        )
        for i in range(len(labelings))
        for j in range(i + 1, len(labelings))
    }


def bench_pairs(name: str, p: np.ndarray, n: int, n_labelings: int, repeats: int) -> dict:
    labelings = noisy_copies(p, n, n_labelings, PAIRS_NOISE, seed=1)
    ours_s, scores = best_of(lambda: pairwise_scores(labelings, ("ari", "ami")), repeats)
    sk_s, theirs = best_of(lambda: sklearn_pairs(labelings), repeats)
    diff = max(
        max(abs(ari - scores["ari"][i, j]), abs(ami - scores["ami"][i, j]))
        for (i, j), (ari, ami) in theirs.items()
    )
    return {
        f"{name}_pairs_seconds": ours_s,
        f"{name}_pairs_sklearn_seconds": sk_s,
        f"{name}_pairs_speedup": sk_s / ours_s,
        f"{name}_pairs_max_abs_diff": diff,
    }


# -- NCC + CDNV over stored layers ------------------------------------------------------
def write_layers(store: EmbeddingStore, tables: int, n: int, d: int, classes: int) -> list[str]:
    rng = np.random.RandomState(3)
    names = []
    n_train = int(0.8 * n)
    for t in range(tables):
        y = rng.randint(classes, size=n)
        centres = rng.randn(classes, d).astype(np.float32) * 2
        X = centres[y] + rng.randn(n, d).astype(np.float32)
        data = pa.table(
            {
                "split": ["train"] * n_train + ["test"] * (n - n_train),
                "label": pa.array(y, pa.int32()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d),
            }
        )
        name = f"bench/layer{t}"
        store.write_unit(
            name, name, data, pa.schema([pa.field("unit_key", pa.string(), False), *data.schema])
        )
        names.append(name)
    return names


def one_pass(store: EmbeddingStore, table: str) -> tuple[float, float]:
    """NCC accuracy and CDNV reading train rows once and test rows once."""
    ds = store.dataset(table)
    stats = ClassStatistics()
    columns = ["label", "embedding"]
    for batch in ds.to_batches(columns=columns, filter="split = 'train'", batch_size=BATCH_ROWS):
        stats.update(
            embedding_matrix(pa.Table.from_batches([batch])), batch.column("label").to_numpy()
        )
    classes, means = stats.classes, stats.means
    correct, total = 0, 0
    for batch in ds.to_batches(columns=columns, filter="split = 'test'", batch_size=BATCH_ROWS):
        X = embedding_matrix(pa.Table.from_batches([batch]))
        predicted = nearest_class_mean(X, classes, means)
        correct += int((predicted == batch.column("label").to_numpy()).sum())
        total += len(X)
    return correct / total, cdnv_from_statistics(stats)


def whole_table(store: EmbeddingStore, table: str) -> tuple[float, float]:
    """The same figures from the whole table loaded into NumPy first."""
    rows = store.read(table, columns=["split", "label", "embedding"])
    X = embedding_matrix(rows).astype(np.float64)
    y = rows.column("label").to_numpy()
    train = rows.column("split").to_numpy(zero_copy_only=False) == "train"
    classes = np.unique(y[train])
    means = np.stack([X[train & (y == c)].mean(0) for c in classes])
    variances = np.array(
        [((X[train & (y == c)] - means[i]) ** 2).sum(1).mean() for i, c in enumerate(classes)]
    )
    ncc = (nearest_class_mean(X[~train], classes, means) == y[~train]).mean()
    gaps = ((means[:, None] - means[None]) ** 2).sum(-1)
    off = ~np.eye(len(classes), dtype=bool)
    cdnv = ((variances[:, None] + variances[None])[off] / (2 * gaps[off])).mean()
    return float(ncc), float(cdnv)


def io_counters() -> dict[str, int]:
    """This process's I/O counters from /proc/self/io (Linux): ``rchar``, ``read_bytes``, ..."""
    try:
        with open("/proc/self/io") as f:
            return {key: int(value) for key, value in (line.split(":") for line in f)}
    except OSError as error:
        raise RuntimeError(
            f"cannot read /proc/self/io ({error}); the NCC/CDNV benchmark counts I/O on Linux only"
        ) from error


def evict(root: str) -> None:
    """Flush the files under ``root`` and drop their pages from the page cache."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cold_runs(fn, root: str, repeats: int):
    """Best time of ``repeats`` cold-cache runs of ``fn``, its value and the first run's I/O."""
    best, io = float("inf"), None
    for _ in range(repeats):
        evict(root)
        before, start = io_counters(), time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
        after = io_counters()
        io = io or {key: after[key] - before[key] for key in ("rchar", "read_bytes")}
    return best, value, io


def bench_ncc_cdnv(tables: int, n: int, d: int, classes: int, repeats: int) -> dict:
    root = tempfile.mkdtemp(prefix="stratalens-bench-")
    try:
        store = EmbeddingStore(root)
        names = write_layers(store, tables, n, d, classes)
        on_disk = sum(
            os.path.getsize(os.path.join(folder, name))
            for folder, _, files in os.walk(root)
            for name in files
        )
        ours_s, ours, io = cold_runs(lambda: [one_pass(store, t) for t in names], root, repeats)
        base_s, base, base_io = cold_runs(
            lambda: [whole_table(store, t) for t in names], root, repeats
        )
        diff = max(
            max(abs(a[0] - b[0]), abs(a[1] - b[1]) / abs(b[1]))
            for a, b in zip(ours, base, strict=True)
        )
        # read_bytes only where every eviction took: a page kept (written back late, or
        # mapped by another process) is read from the cache and not counted
        embedding_bytes = tables * n * d * 4
        evicted = min(io["read_bytes"], base_io["read_bytes"]) >= embedding_bytes
        counter = "read_bytes" if evicted else "rchar"
        return {
            "ncc_cdnv_tables": tables,
            "ncc_cdnv_seconds": ours_s,
            "ncc_cdnv_whole_table_seconds": base_s,
            "ncc_cdnv_time_vs_whole_table": ours_s / base_s,
            "ncc_cdnv_max_rel_diff": diff,
            "ncc_cdnv_io_counter": counter,
            "ncc_cdnv_bytes_read": io[counter],
            "ncc_cdnv_read_bytes": io["read_bytes"],
            "ncc_cdnv_rchar": io["rchar"],
            "ncc_cdnv_whole_table_bytes_read": base_io[counter],
            "ncc_cdnv_bytes_on_disk": on_disk,
            "ncc_cdnv_embedding_bytes": embedding_bytes,
            "ncc_cdnv_reads_per_byte_on_disk": io[counter] / on_disk,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, repeats=3, labelings=8)
    if args.quick:
        n, k, ward_samples, tables, d, classes = 5_000, 100, 1_000, 4, 64, 10
    else:
        n, k, ward_samples, tables, d, classes = 50_000, 1_000, WARD_SAMPLES, 48, 512, 100
    start = time.perf_counter()
    adjusted_mutual_info_score([0, 0, 1, 2], [0, 1, 1, 2])  # numba's cache load or compile
    first_call = time.perf_counter() - start
    skm.adjusted_mutual_info_score([0, 0, 1, 2], [0, 1, 1, 2])
    results = {
        "n": n,
        "labels": k,
        "repeats": args.repeats,
        "labelings": args.labelings,
        "pairs": args.labelings * (args.labelings - 1) // 2,
        "first_call_seconds": first_call,
    }
    for name in DISTRIBUTIONS:
        p = proportions(name, k, ward_samples)
        results |= bench_ami(name, p, n, args.repeats)
        results |= bench_pairs(name, p, n, args.labelings, args.repeats)
    results |= bench_ncc_cdnv(tables, n, d, classes, args.repeats)
    return report(results, args.json)


if __name__ == "__main__":
    main()
