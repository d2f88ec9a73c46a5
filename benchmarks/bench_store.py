"""`stratalens bench store`: the Lance store against NumPy files, measured in one run.

On n x d float32 embeddings (default 50,000 x 2,048) on local disk:
- ``write_vs_npsave``: ``np.save`` time / time to write and commit one embeddings unit;
- ``lance_write_vs_npsave``: the same ratio for Lance's writer alone (the embedding
  column, in the store's write threads, no key columns, checks or commit): the
  ceiling of ``write_vs_npsave`` on this machine;
- ``read_vs_npload``: ``np.load`` time / time to read the layer back into a NumPy array
  (``EmbeddingStore.embedding_array``);
- ``take_1000_vs_scan``: time to fetch 1,000 random rows by ``sample_index`` (a filter
  answered by its BTREE index) / time of the same query without the filter (a full scan
  of both columns); ``take_1000_no_index_vs_scan``: the same take with that index
  dropped (the same fragments, the filter evaluated on the scanned key column), and
  ``take_1000_index_speedup``: the take's time without the index over its time with it;
- the same three figures, prefixed ``large_``, on a 1,000,000 x 256 float32 table
  (1 GB, written as 8 units; ``--quick``: 20,000 x 16), where the key column a take
  without the index scans is 20 times longer;
- ``concurrent_speedup_8``: rows/s of 8 Ray tasks writing disjoint units at once over
  rows/s of one task writing the same 8 units in turn (one committer in both cases;
  both on the same 8 worker processes, started before the timing);
- ``one_writer_busy_cores`` and ``eight_writers_busy_cores``: how many of the machine's
  cores were busy, on average, during each run (every process and the kernel's
  page-cache writeback, from /proc/stat), and ``speedup_8_bound`` = the machine's cores
  over the first: the most that 8 writers could gain on this machine;
- ``exactly_once``: re-running the 8 committed units added no row.
Ratios above 1 favour stratalens for the first two, ``concurrent_speedup_8`` and the
index speedups; the take ratios should be small. Every query of the take figures opens
the table afresh (``EmbeddingStore.read``), as a user's query does.

Usage: python benchmarks/bench_store.py [--json] [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from common import parse_args, report  # benchmarks/ is on sys.path

from storage import EmbeddingStore, embeddings_table
from storage import schema as S
from storage.store import STORAGE_FORMAT, WRITE_THREADS

REPEATS = 5  # best of: page faults on this VM make single runs noisy
TAKE_ROWS = 1_000
# The take figures again where scanning the key column costs 20 times more than at 50,000
# rows: 1,000,000 x 256 float32 (1 GB) fits this 24 GiB, 2-core machine twice over (the
# table and a scan's result) and writes, indexes and times in well under a minute.
LARGE_TAKE_SHAPE = (1_000_000, 256)
QUICK_LARGE_TAKE_SHAPE = (20_000, 16)
LARGE_TAKE_UNITS = 8  # written as a layer of 8 runs would be, then compacted
# How Lance's plan names a filter answered by a scalar index (checked, not assumed).
SCALAR_INDEX_NODE = "ScalarIndexQuery"


def unit_rows(X: np.ndarray, start: int, run: str) -> pa.Table:
    return S.embedding_rows(
        X,
        sample_index=np.arange(start, start + len(X)),
        subclass=np.zeros(len(X)),
        superclass=np.zeros(len(X)),
        experiment_id="bench",
        run_id=run,
        dataset_id="synthetic",
        arch="net",
        seed=0,
        epoch=1,
        split="test",
    )


def best_of(fn, repeats: int = REPEATS, *, setup=None) -> float:
    """Best time of ``fn`` over ``repeats`` runs, each after an untimed ``setup()``."""
    best = float("inf")
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_single(X: np.ndarray, root: Path) -> dict:
    table = embeddings_table("bench", "net", "layer")
    np_path = root / "x.npy"
    # Both writes go to a path cleared before each repeat, outside the timing.
    save_s = best_of(lambda: np.save(np_path, X), setup=lambda: np_path.unlink(missing_ok=True))
    load_s = best_of(lambda: np.load(np_path))

    def write():
        store = EmbeddingStore(str(root / "store"))
        store.write_unit(table, "u", unit_rows(X, 0, "r0"), S.embeddings_schema(X.shape[1]))

    write_s = best_of(write, setup=lambda: shutil.rmtree(root / "store", ignore_errors=True))
    lance_write_s = best_of(
        lambda: lance_write(X, root / "lance"),
        setup=lambda: shutil.rmtree(root / "lance", ignore_errors=True),
    )
    store = EmbeddingStore(str(root / "store"))
    read_s = best_of(lambda: store.embedding_array("bench", "net", "layer"))
    assert np.array_equal(store.embedding_array("bench", "net", "layer"), X)
    return {
        "np_save_seconds": save_s,
        "np_load_seconds": load_s,
        "write_seconds": write_s,
        "read_seconds": read_s,
        "lance_write_seconds": lance_write_s,
        "write_vs_npsave": save_s / write_s,
        "lance_write_vs_npsave": save_s / lance_write_s,
        "read_vs_npload": load_s / read_s,
    }


def best_of_each(fns: dict[str, Callable[[], object]], repeats: int = REPEATS) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds that run them all in turn, so
    that drift on a noisy machine hits each alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], best_of(fn, repeats=1))
    return best


def uses_scalar_index(store: EmbeddingStore, table: str, version: int, filter: str) -> bool:
    """Whether Lance answers ``filter`` on ``table`` at ``version`` from a scalar index."""
    scanner = store.dataset(table, version=version).scanner(columns=["sample_index"], filter=filter)
    return SCALAR_INDEX_NODE in scanner.explain_plan()


def bench_take(store: EmbeddingStore, table: str, n: int, prefix: str = "") -> dict:
    """The take figures of ``table`` (n rows), with and without the ``sample_index`` index.

    ``optimize`` compacts the table and indexes its key columns (version ``indexed``);
    dropping the ``sample_index`` index then commits version ``bare``, the same
    fragments without it. Both versions are timed in the same rounds.
    """
    store.optimize(table)
    ds = store.dataset(table)
    indexed = ds.version
    names = [i["name"] for i in ds.list_indices() if i["fields"] == ["sample_index"]]
    if len(names) != 1:
        raise RuntimeError(
            f"optimize built {len(names)} indices on sample_index of {table!r}; expected one"
        )
    index = names[0]
    ds.drop_index(index)
    bare = store.version(table)
    picks = np.random.RandomState(0).choice(n, TAKE_ROWS, replace=False)
    take_filter = f"sample_index IN ({', '.join(map(str, picks))})"
    if not uses_scalar_index(store, table, indexed, take_filter):
        raise RuntimeError(f"Lance does not use index {index!r} for the take; see explain_plan")
    if uses_scalar_index(store, table, bare, take_filter):
        raise RuntimeError(f"Lance still uses a scalar index once {index!r} is dropped")
    columns = ["sample_index", "embedding"]
    seconds = best_of_each(
        {
            "scan": lambda: store.read(table, columns=columns, version=indexed),
            "index": lambda: store.read(
                table, columns=columns, filter=take_filter, version=indexed
            ),
            "bare": lambda: store.read(table, columns=columns, filter=take_filter, version=bare),
        }
    )
    for version in (indexed, bare):
        got = store.read(table, columns=["sample_index"], filter=take_filter, version=version)
        if sorted(got.column(0).to_pylist()) != sorted(picks.tolist()):
            raise RuntimeError(f"the take at version {version} did not return the rows asked for")
    return {
        f"{prefix}scan_seconds": seconds["scan"],
        f"{prefix}take_1000_seconds": seconds["index"],
        f"{prefix}take_1000_no_index_seconds": seconds["bare"],
        f"{prefix}take_1000_vs_scan": seconds["index"] / seconds["scan"],
        f"{prefix}take_1000_no_index_vs_scan": seconds["bare"] / seconds["scan"],
        f"{prefix}take_1000_index_speedup": seconds["bare"] / seconds["index"],
    }


def bench_large_take(n: int, d: int, root: Path) -> dict:
    """The take figures on an n x d table written as ``LARGE_TAKE_UNITS`` units."""
    store = EmbeddingStore(str(root / "large"))
    table = embeddings_table("bench", "net", "large")
    per = n // LARGE_TAKE_UNITS
    for unit in range(LARGE_TAKE_UNITS):
        X = np.random.RandomState(unit).rand(per, d).astype(np.float32)
        store.write_unit(
            table, f"u{unit}", unit_rows(X, unit * per, f"r{unit}"), S.embeddings_schema(d)
        )
    figures = bench_take(store, table, per * LARGE_TAKE_UNITS, prefix="large_")
    shutil.rmtree(root / "large")
    return {"large_n": per * LARGE_TAKE_UNITS, "large_d": d} | figures


def lance_write(X: np.ndarray, uri: Path) -> None:
    """Lance's writer alone: X as one vector column, in the store's write threads."""
    from lance.fragment import write_fragments  # after storage has set Lance's log level

    vectors = pa.table({S.EMBEDDING: pa.FixedSizeListArray.from_arrays(X.ravel(), X.shape[1])})
    step = -(-len(X) // WRITE_THREADS)

    def write(start: int) -> None:
        write_fragments(
            vectors.slice(start, step),
            str(uri),
            mode="append",
            data_storage_version=STORAGE_FORMAT,
        )

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(write, range(0, len(X), step)))


@ray.remote(num_cpus=0.25)
def write_units(store: EmbeddingStore, X_ref, starts: list[int], per: int):
    X = X_ref
    return [
        store.write_fragments(
            embeddings_table("bench", "net", "concurrent"),
            f"unit{start}",
            unit_rows(X[start : start + per], start, f"r{start}"),
            S.embeddings_schema(X.shape[1]),
        )
        for start in starts
    ]


@ray.remote(num_cpus=0.25)
def hold_worker(until: float) -> int:
    """Occupy one worker process, with the store's modules imported, until ``until``."""
    import storage  # noqa: F401 - what a writer imports

    time.sleep(max(0.0, until - time.time()))
    return os.getpid()


def start_workers(n: int) -> None:
    """Start n worker processes at once (each task holds its worker for 2 s)."""
    ray.get([hold_worker.remote(time.time() + 2) for _ in range(n)])


def busy_cpu_seconds() -> float | None:
    """CPU seconds that all cores of this machine have been busy since boot (Linux only)."""
    try:
        first_line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(t) for t in first_line.split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def bench_concurrent(X: np.ndarray, root: Path, writers: int = 8) -> dict:
    from jobs.pipeline import init_ray

    # Both runs use the same started worker processes, kept while idle (Ray stops idle
    # workers after ~1 s by default): the figure is write throughput, not process start-up.
    init_ray(None, system_config={"kill_idle_workers_interval_ms": 0})
    start_workers(writers)
    per = len(X) // writers
    starts = [w * per for w in range(writers)]
    X_ref = ray.put(X)
    table = embeddings_table("bench", "net", "concurrent")

    def clear() -> None:
        shutil.rmtree(root / "cstore", ignore_errors=True)

    busy = {False: [], True: []}

    def run(parallel: bool) -> EmbeddingStore:
        busy_before = busy_cpu_seconds()
        store = EmbeddingStore(str(root / "cstore"))
        if parallel:
            refs = [write_units.remote(store, X_ref, [s], per) for s in starts]
        else:
            refs = [write_units.remote(store, X_ref, starts, per)]
        for units in ray.get(refs):
            for unit in units:
                store.commit(unit)
        if busy_before is not None:
            busy[parallel].append(busy_cpu_seconds() - busy_before)
        return store

    seconds = {False: [], True: []}
    for _ in range(REPEATS):  # alternate, so that drift on a noisy machine hits both alike
        for parallel in seconds:
            seconds[parallel].append(best_of(lambda p=parallel: run(p), repeats=1, setup=clear))
    one_s, many_s = min(seconds[False]), min(seconds[True])
    # Busy cores during each fastest run (None off Linux).
    one_cores, many_cores = (
        busy[p][seconds[p].index(s)] / s if busy[p] else None
        for p, s in ((False, one_s), (True, many_s))
    )
    clear()
    store = run(parallel=True)
    rows_before, version = (
        store.read(table, columns=["sample_index"]).num_rows,
        store.version(table),
    )
    rerun = [
        store.commit(u)
        for units in ray.get([write_units.remote(store, X_ref, [s], per) for s in starts])
        for u in units
    ]
    rows_after = store.read(table, columns=["sample_index"]).num_rows
    index = store.read(table, columns=["sample_index"]).column(0).to_numpy()
    return {
        "one_writer_seconds": one_s,
        "eight_writers_seconds": many_s,
        "concurrent_speedup_8": one_s / many_s,
        "cores": os.cpu_count(),
        "one_writer_busy_cores": one_cores,
        "eight_writers_busy_cores": many_cores,
        "speedup_8_bound": os.cpu_count() / one_cores if one_cores else None,
        "all_rows_once": bool(len(np.unique(index)) == len(index) == per * writers),
        "exactly_once": bool(
            not any(rerun) and rows_after == rows_before and store.version(table) == version
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    n, d = (4_000, 128) if args.quick else (50_000, 2_048)
    X = np.random.RandomState(0).rand(n, d).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="stratalens-bench-") as tmp:
        results = {"n": n, "d": d}
        results |= bench_single(X, Path(tmp))
        store = EmbeddingStore(str(Path(tmp) / "store"))
        results |= bench_take(store, embeddings_table("bench", "net", "layer"), n)
        large = QUICK_LARGE_TAKE_SHAPE if args.quick else LARGE_TAKE_SHAPE
        results |= bench_large_take(*large, Path(tmp))
        results |= bench_concurrent(X, Path(tmp))
    return report(results, args.json)


if __name__ == "__main__":
    main()
