"""`stratalens bench serve`: the query service over HTTP against the store read locally.

A uvicorn process serves a store holding one n x d float32 layer (default 50,000 x 512,
a mixture of 200 Gaussian clusters) and a metrics table, on 127.0.0.1. In one run:
- ``layer_http_vs_local``: bytes/s of the layer's embeddings fetched whole over HTTP as
  an Arrow IPC stream and read into an Arrow table by the service's Python client
  (``services.api.client``) over bytes/s of
  ``EmbeddingStore.embedding_array`` in this process (both counted on the n x d x 4
  embedding bytes; the stream also carries the key columns), best of ``REPEATS`` each
  (``layer_http_vs_local_median``: of the medians). After those rounds, the service and
  a minimal-overhead reference server (``benchmarks/plain_http.py``: no framework,
  blocking sockets, no copy in Python) fetch the layer in turn: ``layer_reference_vs_local``
  is the reference's best against the best in-process read, ``layer_http_vs_reference``
  the service's share of the reference's speed;
- ``take_1000_p50_ms`` / ``take_1000_p99_ms``: latency of 1,000 random rows by
  ``sample_index`` over HTTP, and ``take_1000_vs_layer``: its p50 over the median time
  of fetching the whole layer (asked: <= 0.1; ``take_1000_vs_layer_best``: over the
  best). The local reads, the layer fetches and the row fetches alternate, as do the
  exact and indexed searches below (in blocks of ``SEARCH_BLOCK`` queries), so that
  the load of a shared machine falls on contender and baseline alike;
- ``metrics_rps``, ``metrics_p99_ms``, ``metrics_errors``: ``--clients`` concurrent
  clients sending metrics queries (JSON, ~50 rows each) for ``--seconds`` s;
- ``neighbors_recall_at_10`` and ``neighbors_speedup``: k = 10 nearest neighbours of
  ``--queries`` vectors through the layer's IVF_HNSW_SQ index against Lance's exact scan
  (recall of the exact answer; median exact time / median index time, in this process
  through ``storage.index.nearest``, which the endpoint calls), ``index_build_seconds``,
  and the same two searches over HTTP (``neighbors_http_*``).

Usage: python benchmarks/bench_serve.py [--json] [--quick] [--n N] [--d D] [--clients C]
[--seconds S] [--queries Q] [--workers W] [--ray R]

With ``--ray R`` the service runs as a Ray Serve deployment of R replicas (``stratalens
serve --ray``, a local Ray) and only the metrics load is measured (``metrics_*``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
from common import parse_args, report  # benchmarks/ is on sys.path

from services.api.client import fetch_table
from storage import EmbeddingStore, embeddings_table
from storage import schema as S
from storage.index import build_index, nearest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT, ARCH, LAYER, RUN = "bench", "net", "layer", "bench/synthetic/net/seed0"
CLUSTERS = 200  # Gaussian clusters the vectors are drawn around
NOISE = 0.6  # spread of each cluster, relative to the spread of the centres
REPEATS = 5  # best of, for the whole-layer fetches
TAKE_REQUESTS = 50  # latency samples of the 1,000-row fetch
TAKE_ROWS = 1_000
K = 10
SEARCH_BLOCK = 10  # exact and indexed searches alternate in blocks of this many queries
SERVER_START_S = 240  # Ray Serve on a loaded 2-core machine took minutes to start
METRIC_LAYERS = 20  # the metrics table: layers x seeds x scopes x metrics rows
METRIC_SEEDS = 10
METRIC_SCOPES = 25
METRIC_NAMES = ("ami", "purity", "ari", "nmi")


def make_store(root: Path, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Write the benchmark store; returns the layer's vectors (n, d) float32."""
    store = EmbeddingStore(str(root))
    experiment = {
        "experiment_id": EXPERIMENT,
        "name": EXPERIMENT,
        "spec": "{}",
        "created_at": datetime.now(timezone.utc),
    }
    store.write_unit(
        S.EXPERIMENTS,
        EXPERIMENT,
        pa.Table.from_pylist([experiment], schema=S.EXPERIMENTS_SCHEMA.remove(0)),
    )
    centres = rng.normal(size=(CLUSTERS, d)).astype(np.float32)
    X = centres[rng.integers(0, CLUSTERS, n)] + NOISE * rng.normal(size=(n, d)).astype(np.float32)
    rows = S.embedding_rows(
        X,
        sample_index=np.arange(n),
        subclass=np.zeros(n),
        superclass=np.zeros(n),
        experiment_id=EXPERIMENT,
        run_id=RUN,
        dataset_id="synthetic",
        arch=ARCH,
        seed=0,
        epoch=1,
        split="test",
    )
    table = embeddings_table(EXPERIMENT, ARCH, LAYER)
    store.write_unit(table, "layer", rows, S.embeddings_schema(d))
    metrics = [
        {
            "experiment_id": EXPERIMENT,
            "run_id": f"{EXPERIMENT}/synthetic/{ARCH}/seed{seed}",
            "dataset_id": "synthetic",
            "arch": ARCH,
            "seed": seed,
            "epoch": 1,
            "layer": f"layer{layer}",
            "split": "test",
            "scope": f"superclass={scope}",
            "method": "ward",
            "overclustering_factor": 1,
            "n_clusters": 4,
            "metric": metric,
            "value": float(rng.random()),
        }
        for layer in range(METRIC_LAYERS)
        for seed in range(METRIC_SEEDS)
        for scope in range(METRIC_SCOPES)
        for metric in METRIC_NAMES
    ]
    store.write_unit(
        S.METRICS, "metrics", pa.Table.from_pylist(metrics, schema=S.METRICS_SCHEMA.remove(0))
    )
    for name in (table, S.METRICS, S.EXPERIMENTS):
        store.optimize(name)
    return X


def start_server(
    root: Path, workers: int, log: Path, ray_replicas: int = 0
) -> tuple[subprocess.Popen, str]:
    """``stratalens serve`` (uvicorn, or Ray Serve with ``ray_replicas``) serving ``root``
    on a free port of 127.0.0.1."""
    port = _free_port()
    command = [sys.executable, "-m", "jobs.cli", "serve", "--store", str(root)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if ray_replicas:
        command += ["--ray", "--replicas", str(ray_replicas)]
    return _started(command, port, log, root)


def start_reference(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """The framework-free reference server (``benchmarks/plain_http.py``) serving the
    layer of ``root`` on a free port of 127.0.0.1."""
    port = _free_port()
    script = Path(__file__).with_name("plain_http.py")
    command = [sys.executable, str(script), str(root), str(port), EXPERIMENT, ARCH, LAYER]
    return _started(command, port, log, root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _started(command: list[str], port: int, log: Path, root: Path) -> tuple[subprocess.Popen, str]:
    """``command`` serving the store ``root``, its output in ``log``, once it answers
    ``/readyz`` on ``port``."""
    env = os.environ | {"STRATALENS_STORE": str(root), "PYTHONPATH": str(REPO)}
    env.pop("STRATALENS_TOKEN", None)
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return process, url
            except httpx.TransportError:
                time.sleep(0.25)
        raise RuntimeError(f"the server did not answer within {SERVER_START_S} s")
    except BaseException:  # not ready, or interrupted: stop ours, by its process id
        process.kill()
        process.wait()
        raise


def fetch_arrow(url: str, params: dict) -> pa.Table:
    """One embeddings query read into an Arrow table as it streams in, by the service's
    Python client (``services.api.client``: the standard library's HTTP, each batch read
    into Arrow's memory pool; httpx's chunk parser took ~2x as long for the whole layer)."""
    return fetch_table(f"{url}/v1/experiments/{EXPERIMENT}/embeddings", params)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_layer_and_take(
    store: EmbeddingStore, url: str, n: int, d: int, rng: np.random.Generator
) -> dict:
    """The whole layer in process and over HTTP, and 1,000-row fetches, alternated: each
    round reads the layer locally, fetches it over HTTP, then sends a tenth of the row
    fetches, so that the load of the shared machine falls on all three alike."""
    params = {"arch": ARCH, "layer": LAYER}
    got = fetch_arrow(url, params)
    assert got.num_rows == n  # a broken answer would void every figure
    local, http, takes = [], [], []
    for _ in range(REPEATS):
        local.append(timed(lambda: store.embedding_array(EXPERIMENT, ARCH, LAYER)))
        http.append(timed(lambda: fetch_arrow(url, params)))
        for _ in range(TAKE_REQUESTS // REPEATS):
            picked = rng.choice(n, min(TAKE_ROWS, n), replace=False)
            query = params | {"sample_index": ",".join(map(str, picked))}
            start = time.perf_counter()
            rows = fetch_arrow(url, query)
            takes.append(time.perf_counter() - start)
            assert rows.num_rows == len(picked)
    local_s, http_s = min(local), min(http)
    payload = n * d * 4
    p50, p99 = np.percentile(takes, [50, 99])
    return {
        "layer_local_seconds": local_s,
        "layer_http_seconds": http_s,
        "layer_local_mb_per_s": payload / local_s / 1e6,
        "layer_http_mb_per_s": payload / http_s / 1e6,
        "layer_http_vs_local": local_s / http_s,
        "layer_http_vs_local_median": float(np.median(local) / np.median(http)),
        "take_1000_p50_ms": p50 * 1e3,
        "take_1000_p99_ms": p99 * 1e3,
        "take_1000_vs_layer": p50 / float(np.median(http)),
        "take_1000_vs_layer_best": p50 / http_s,
    }


def bench_reference(url: str, reference_url: str, local_s: float) -> dict:
    """The whole layer from the service and from the reference server, each first in
    turn, after the rounds of :func:`bench_layer_and_take` (whose figures it leaves as
    they were measured before there was a reference); ``local_s`` is their best
    in-process read."""
    params = {"arch": ARCH, "layer": LAYER}
    got = fetch_table(f"{reference_url}/layer")
    assert got.equals(fetch_arrow(url, params))  # the same rows, both ways
    http, reference = [], []
    fetches = [
        (http, lambda: fetch_arrow(url, params)),
        (reference, lambda: fetch_table(f"{reference_url}/layer")),
    ]
    for turn in range(REPEATS):
        for times, fetch in fetches[turn % 2 :] + fetches[: turn % 2]:
            times.append(timed(fetch))
    return {
        "layer_reference_seconds": min(reference),
        "layer_reference_vs_local": local_s / min(reference),
        "layer_http_vs_reference": min(reference) / min(http),
    }


async def _load(url: str, clients: int, seconds: float) -> tuple[list[float], list[str], int]:
    """``clients`` tasks sending metrics queries for ``seconds``; latencies, errors (what
    went wrong, one line each), rows."""
    latencies: list[float] = []
    errors: list[str] = []
    rows = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def one_client(i: int) -> None:
            nonlocal rows
            rng = np.random.default_rng(i)
            while time.perf_counter() < stop:
                params = {
                    "layer": f"layer{rng.integers(METRIC_LAYERS)}",
                    "seed": int(rng.integers(METRIC_SEEDS)),
                    "metric": METRIC_NAMES[rng.integers(len(METRIC_NAMES))],
                }
                start = time.perf_counter()
                try:
                    answer = await client.get(
                        f"/v1/experiments/{EXPERIMENT}/metrics", params=params
                    )
                    if answer.status_code == 200:
                        rows += len(answer.json())
                    else:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, errors, rows


def bench_metrics(url: str, clients: int, seconds: float) -> dict:
    start = time.perf_counter()
    latencies, errors, rows = asyncio.run(_load(url, clients, seconds))
    elapsed = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "metrics_clients": clients,
        "metrics_seconds": elapsed,
        "metrics_requests": len(latencies),
        "metrics_rps": len(latencies) / elapsed,
        "metrics_p50_ms": p50 * 1e3,
        "metrics_p99_ms": p99 * 1e3,
        "metrics_rows_per_answer": rows / max(1, len(latencies) - len(errors)),
        "metrics_errors": len(errors),
        "metrics_error_kinds": sorted(set(errors))[:5],
    }


def bench_neighbors(
    store: EmbeddingStore,
    client: httpx.Client,
    X: np.ndarray,
    queries: int,
    rng: np.random.Generator,
) -> dict:
    start = time.perf_counter()
    built = build_index(store, EXPERIMENT, ARCH, LAYER)
    build_s = time.perf_counter() - start
    picked = rng.choice(len(X), queries, replace=False)
    vectors = X[picked] + 0.1 * rng.normal(size=(queries, X.shape[1])).astype(np.float32)
    scope = {"run_id": RUN, "epoch": 1, "split": "test"}

    def search(vector, exact: bool):
        start = time.perf_counter()
        found = nearest(store, EXPERIMENT, ARCH, LAYER, vector, K, exact=exact, **scope)
        return time.perf_counter() - start, found

    search(vectors[0], False)  # open the index once, as a serving process has
    exact, indexed = [], []
    # Blocks of the two alternate, so that the machine's load falls on both alike; not
    # single queries: an exact scan reads the whole layer through the CPU caches, and an
    # indexed search right after one took 2-3x its time in a run of indexed searches.
    for block in range(0, len(vectors), SEARCH_BLOCK):
        exact += [search(v, True) for v in vectors[block : block + SEARCH_BLOCK]]
        indexed += [search(v, False) for v in vectors[block : block + SEARCH_BLOCK]]
    assert all(found.search == "index" for _, found in indexed)
    recall = np.mean(
        [
            len(
                set(a.rows.column("sample_index").to_pylist())
                & set(b.rows.column("sample_index").to_pylist())
            )
            / K
            for (_, a), (_, b) in zip(indexed, exact, strict=True)
        ]
    )
    exact_s = float(np.median([t for t, _ in exact]))
    index_s = float(np.median([t for t, _ in indexed]))

    body = {"arch": ARCH, "layer": LAYER, "run": RUN, "epoch": 1, "split": "test", "k": K}
    url = f"/v1/experiments/{EXPERIMENT}/neighbors"

    def over_http(vector: np.ndarray, exact: bool) -> float:
        start = time.perf_counter()
        answer = client.post(url, json=body | {"vector": vector.tolist(), "exact": exact})
        elapsed = time.perf_counter() - start
        assert answer.json()["search"] == ("exact" if exact else "index")
        return elapsed

    http_exact, http_index = [], []
    for block in range(0, len(vectors), SEARCH_BLOCK):
        http_exact += [over_http(v, True) for v in vectors[block : block + SEARCH_BLOCK]]
        http_index += [over_http(v, False) for v in vectors[block : block + SEARCH_BLOCK]]
    http_exact, http_index = np.median(http_exact), np.median(http_index)
    return {
        "index_type": built.index_type,
        "index_build_seconds": build_s,
        "neighbors_queries": queries,
        "neighbors_exact_ms": exact_s * 1e3,
        "neighbors_index_ms": index_s * 1e3,
        "neighbors_recall_at_10": float(recall),
        "neighbors_speedup": exact_s / index_s,
        "neighbors_http_exact_ms": http_exact * 1e3,
        "neighbors_http_index_ms": http_index * 1e3,
        "neighbors_http_speedup": http_exact / http_index,
    }


def stop_server(process: subprocess.Popen) -> None:
    """Interrupt the server (Ray Serve then shuts Serve and its local Ray down) and wait."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(
        __doc__, argv, n=50_000, d=512, clients=32, seconds=30, queries=100, workers=1, ray=0
    )
    if args.quick:
        args.n, args.d, args.seconds, args.queries = 4_000, 64, 2, 10
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="stratalens-bench-serve-"))
    process = None
    try:
        X = make_store(root / "store", args.n, args.d, rng)
        import lance  # after storage, which sets Lance's log level

        # as the service opens it: one Lance session keeps indices and metadata cached
        store = EmbeddingStore(str(root / "store"), session=lance.Session())
        process, url = start_server(root / "store", args.workers, root / "server.log", args.ray)
        results: dict = {
            "n": args.n,
            "d": args.d,
            "cores": os.cpu_count(),
            "server_workers": args.workers,
            "ray_serve_replicas": args.ray,
        }
        if args.ray:  # the service's throughput under Ray Serve: the metrics load alone
            results |= bench_metrics(url, args.clients, args.seconds)
            return report(results, args.json)
        results |= bench_layer_and_take(store, url, args.n, args.d, rng)
        reference, reference_url = start_reference(root / "store", root / "reference.log")
        try:
            results |= bench_reference(url, reference_url, results["layer_local_seconds"])
        finally:
            reference.kill()  # ours, by its process id
            reference.wait()
        with httpx.Client(base_url=url, timeout=120) as client:
            results |= bench_metrics(url, args.clients, args.seconds)
            results |= bench_neighbors(store, client, X, args.queries, rng)
    finally:
        if process is not None:
            stop_server(process)
        shutil.rmtree(root, ignore_errors=True)
    return report(results, args.json)


if __name__ == "__main__":
    main()
