"""`stratalens bench consistency`: linear CKA of every layer pair of two runs, streamed vs per pair.

Two runs of one experiment, 16 layers each, widths ramping from 64 to 2,048
(``DIMS``: 9,984 columns per run), ``--rows`` samples (default N = 50,000: 2.0 GB of
float32 per run) stored in real ``embeddings/<experiment>/<arch>/<layer>`` tables.

- ours: ``jobs.compare.layer_pair_cka``, what ``stratalens compare --metrics cka``
  runs: every layer table scanned once per run, into one ``CKAAccumulator``
  (float64, torch on the CPU here), in a child process whose peak resident memory
  (``VmHWM``) is reported (``streamed_peak_rss_mib``);
- baseline: for each of the 16 x 16 pairs, both layers read with
  ``EmbeddingStore.embedding_array`` and CKA from the NumPy float64 cross-covariance of
  the centred features, ``||Xc'Yc||^2 / (||Xc'Xc|| ||Yc'Yc||)``.

Both start with the tables evicted from the page cache; bytes read are this
process's storage reads (``read_bytes``: what came from disk; the baseline's repeated
reads of a table mostly hit the page cache) and ``rchar`` (bytes returned by read calls,
cached or not: how much each approach asks the store for).
The largest |difference| of the 256 values is reported. Memory: ours holds a
(10,000 x 10,000) float64 cross matrix (0.8 GB), per run one float64 4,096-row batch
of every layer side by side (0.33 GB) and the float32 batches it is filled from; the
baseline two layers at a time. One timed run of each (minutes at full size on two
cores). GPU: not measured (none on the development machine).

``--shuffled 1`` stores the second run's rows in another sample order, so that its
tables are read by row id in the first run's order (``streamed_*`` then measure that
path; the baseline sorts both sides by ``sample_index``).

Usage: python benchmarks/bench_consistency.py [--json] [--quick] [--rows N] [--shuffled 1]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_metrics import evict, io_counters  # benchmarks/ is on sys.path
from common import parse_args, report

from jobs.compare import Side
from storage import EmbeddingStore
from storage import schema as S

DIMS = (64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512, 1024, 1024, 1024, 2048, 2048)
QUICK_ROWS = 2000
LATENT = 32  # layers are noisy linear images of one shared latent, so CKAs are not ~0
EXPERIMENT, ARCH, DATASET, SPLIT = "bench", "wide", "bench-data", "test"


STREAMED_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from bench_consistency import cold, sides
from jobs.compare import layer_pair_cka
from storage import EmbeddingStore
store = EmbeddingStore(sys.argv[1])
seconds, (layers, _, matrix), io = cold(lambda: layer_pair_cka(store, *sides()), sys.argv[1])
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "io": io, "peak_kib": peak, "layers": layers,
                  "matrix": matrix.tolist()}))
"""


def sides() -> list[Side]:
    return [
        Side(EXPERIMENT, ARCH, DATASET, seed, 1, f"{EXPERIMENT}/run{seed}", SPLIT)
        for seed in (0, 1)
    ]


def write_runs(store: EmbeddingStore, n: int, dims, shuffled: bool = False) -> list[Side]:
    """Two runs of ``len(dims)`` layers; with ``shuffled`` the second stores its rows in
    another sample order."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(n, LATENT)).astype(np.float32)
    for seed in (0, 1):
        run_id = f"{EXPERIMENT}/run{seed}"
        shuffle = shuffled and seed == 1
        order = np.random.default_rng(1).permutation(n) if shuffle else np.arange(n)
        for i, d in enumerate(dims):
            X = latent @ rng.normal(size=(LATENT, d)).astype(np.float32)
            X += rng.normal(scale=2.0, size=(n, d)).astype(np.float32)
            rows = S.embedding_rows(
                X[order],
                sample_index=order,
                subclass=np.zeros(n),
                superclass=np.zeros(n),
                experiment_id=EXPERIMENT,
                run_id=run_id,
                dataset_id=DATASET,
                arch=ARCH,
                seed=seed,
                epoch=1,
                split=SPLIT,
            )
            table = S.embeddings_table(EXPERIMENT, ARCH, f"layer{i:02d}")
            store.write_unit(table, run_id, rows, S.embeddings_schema(d))
    return sides()


def streamed(root: str) -> dict:
    """``layer_pair_cka`` of the two runs in a child process, cold: its seconds, I/O
    counters, peak resident memory (KiB) and matrix."""
    out = subprocess.run(
        [sys.executable, "-c", STREAMED_SCRIPT, root, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_pair(store: EmbeddingStore, a: Side, b: Side, layers: list[str]) -> np.ndarray:
    """CKA of every layer pair, reading both tables for each pair."""
    out = np.empty((len(layers), len(layers)))

    def centred(side, layer):
        rows = store.embeddings(
            EXPERIMENT, ARCH, layer, columns=["sample_index"], run_id=side.run_id, split=SPLIT
        )
        X = store.embedding_array(EXPERIMENT, ARCH, layer, run_id=side.run_id, split=SPLIT)
        X = X[np.argsort(rows.column(0).to_numpy())].astype(np.float64)
        return X - X.mean(0)

    for p, la in enumerate(layers):
        for q, lb in enumerate(layers):
            X, Y = centred(a, la), centred(b, lb)
            cross = np.linalg.norm(X.T @ Y) ** 2
            out[p, q] = cross / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))
    return out


def cold(fn, root: str):
    evict(root)
    before, start = io_counters(), time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    after = io_counters()
    return seconds, value, {key: after[key] - before[key] for key in ("rchar", "read_bytes")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv, rows=50_000, shuffled=0)
    n = QUICK_ROWS if args.quick else args.rows
    dims = tuple(max(8, d // 8) for d in DIMS) if args.quick else DIMS
    root = tempfile.mkdtemp(prefix="bench-consistency-")
    try:
        store = EmbeddingStore(root)
        start = time.perf_counter()
        a, b = write_runs(store, n, dims, shuffled=bool(args.shuffled))
        write_s = time.perf_counter() - start
        child = streamed(root)
        ours_s, layers, ours_bytes = child["seconds"], child["layers"], child["io"]
        ours = np.array(child["matrix"])
        base_s, base, base_bytes = cold(lambda: per_pair(store, a, b, layers), root)
        stored = 2 * n * sum(dims) * 4
        return report(
            {
                "rows": n,
                "layers": len(dims),
                "shuffled": bool(args.shuffled),
                "dims": f"{min(dims)}..{max(dims)} (sum {sum(dims)})",
                "stored_gb": stored / 1e9,
                "write_seconds": write_s,
                "streamed_seconds": ours_s,
                "streamed_gb_read_bytes": ours_bytes["read_bytes"] / 1e9,
                "streamed_gb_rchar": ours_bytes["rchar"] / 1e9,
                "streamed_peak_rss_mib": child["peak_kib"] / 1024,
                "per_pair_seconds": base_s,
                "per_pair_gb_read_bytes": base_bytes["read_bytes"] / 1e9,
                "per_pair_gb_rchar": base_bytes["rchar"] / 1e9,
                "speedup": base_s / ours_s,
                "max_abs_diff": float(np.abs(ours - base).max()),
                "cka_range": f"{ours.min():.3f}..{ours.max():.3f}",
            },
            args.json,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
