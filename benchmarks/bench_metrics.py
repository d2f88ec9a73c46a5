"""`stratalens bench metrics`: metrics figures as ratios against baselines measured in the same run.

1. AMI at N = 50,000 with 1,000 x 1,000 labels vs ``sklearn.metrics.adjusted_mutual_info_score``.
2. All-pairs ARI + AMI among 48 clusterings (16 layers x 3 seeds) of N = 50,000 points into
   1,000 clusters vs a loop of scikit-learn calls. The scikit-learn loop is timed on
   ``--sklearn-pairs`` pairs and scaled to all 1,128 (it would take ~25 minutes here);
   the values of those pairs are compared exactly.
3. NCC + CDNV for 48 layer x seed embeddings (50,000 x 512 float32 each, stored in Lance):
   one pass over each table (train rows once for class statistics, test rows once for
   NCC) vs reading the whole table into NumPy first and computing the same figures.

Usage: python benchmarks/bench_metrics.py [--json] [--quick]
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
from common import parse_args, report  # benchmarks/ is on sys.path
from sklearn import metrics as skm

from services.metrics import (
    ClassStatistics,
    adjusted_mutual_info_score,
    cdnv_from_statistics,
    nearest_class_mean,
    pairwise_scores,
)
from storage import EmbeddingStore, embedding_matrix


def timed(fn, repeats: int = 1):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def noisy_copies(n: int, k: int, copies: int, noise: float, seed: int = 0) -> list[np.ndarray]:
    """Clusterings that agree with one base partition except for a fraction ``noise``."""
    rng = np.random.RandomState(seed)
    base = rng.randint(k, size=n)
    return [np.where(rng.rand(n) < noise, rng.randint(k, size=n), base) for _ in range(copies)]


def bench_ami(n: int, k: int) -> dict:
    a, b = noisy_copies(n, k, 2, noise=0.5)
    ours_s, ours = timed(lambda: adjusted_mutual_info_score(a, b), repeats=3)
    sk_s, theirs = timed(lambda: skm.adjusted_mutual_info_score(a, b))
    return {
        "ami_seconds": ours_s,
        "ami_sklearn_seconds": sk_s,
        "ami_speedup": sk_s / ours_s,
        "ami_abs_diff": abs(ours - theirs),
    }


def bench_pairs(n: int, k: int, n_clusterings: int, sklearn_pairs: int) -> dict:
    labelings = noisy_copies(n, k, n_clusterings, noise=0.4, seed=1)
    ours_s, scores = timed(lambda: pairwise_scores(labelings, ("ari", "ami")))
    all_pairs = n_clusterings * (n_clusterings - 1) // 2
    rng = np.random.RandomState(2)
    sampled = [
        tuple(sorted(rng.choice(n_clusterings, 2, replace=False))) for _ in range(sklearn_pairs)
    ]
    start, diff = time.perf_counter(), 0.0
    for i, j in sampled:
        ari = skm.adjusted_rand_score(labelings[i], labelings[j])
        ami = skm.adjusted_mutual_info_score(labelings[i], labelings[j])
        diff = max(diff, abs(ari - scores["ari"][i, j]), abs(ami - scores["ami"][i, j]))
    per_pair = (time.perf_counter() - start) / sklearn_pairs
    return {
        "pairs": all_pairs,
        "pairs_seconds": ours_s,
        "pairs_sklearn_seconds_estimated": per_pair * all_pairs,
        "pairs_sklearn_pairs_timed": sklearn_pairs,
        "pairs_speedup": per_pair * all_pairs / ours_s,
        "pairs_max_abs_diff": diff,
    }


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


def one_pass(store: EmbeddingStore, table: str) -> tuple[float, float, int]:
    """NCC accuracy and CDNV reading train rows once and test rows once."""
    ds = store.dataset(table)
    stats = ClassStatistics()
    for batch in ds.to_batches(
        columns=["label", "embedding"], filter="split = 'train'", batch_size=8192
    ):
        stats.update(
            embedding_matrix(pa.Table.from_batches([batch])), batch.column("label").to_numpy()
        )
    classes, means = stats.classes, stats.means
    correct, total, test_bytes = 0, 0, 0
    for batch in ds.to_batches(
        columns=["label", "embedding"], filter="split = 'test'", batch_size=8192
    ):
        X = embedding_matrix(pa.Table.from_batches([batch]))
        test_bytes += X.nbytes
        correct += int(
            (nearest_class_mean(X, classes, means) == batch.column("label").to_numpy()).sum()
        )
        total += len(X)
    return correct / total, cdnv_from_statistics(stats), stats.bytes_read + test_bytes


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


def bench_ncc_cdnv(tables: int, n: int, d: int, classes: int) -> dict:
    root = tempfile.mkdtemp(prefix="stratalens-bench-")
    try:
        store = EmbeddingStore(root)
        names = write_layers(store, tables, n, d, classes)
        ours_s, ours = timed(lambda: [one_pass(store, t) for t in names])
        base_s, base = timed(lambda: [whole_table(store, t) for t in names])
        diff = max(
            max(abs(a[0] - b[0]), abs(a[1] - b[1]) / abs(b[1]))
            for a, b in zip(ours, base, strict=True)
        )
        return {
            "ncc_cdnv_tables": tables,
            "ncc_cdnv_seconds": ours_s,
            "ncc_cdnv_bytes_read": int(sum(o[2] for o in ours)),
            "ncc_cdnv_bytes_stored": int(tables * n * d * 4),
            "ncc_cdnv_whole_table_seconds": base_s,
            "ncc_cdnv_time_vs_whole_table": ours_s / base_s,
            "ncc_cdnv_max_rel_diff": diff,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, sklearn_pairs=6)
    n, k, tables, d = (5_000, 100, 4, 64) if args.quick else (50_000, 1_000, 48, 512)
    results = {"n": n, "labels": k}
    results |= bench_ami(n, k)
    results |= bench_pairs(n, k, 48 if not args.quick else 6, args.sklearn_pairs)
    results |= bench_ncc_cdnv(tables, n, d, classes=100 if not args.quick else 10)
    return report(results, args.json)


if __name__ == "__main__":
    main()
