"""The store benchmark runs end to end (small sizes), prints every figure issue 3 names,
and refuses to report a take "with the index" that Lance answered without it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import storage.store
from jobs.cli import app
from storage import embeddings_table
from storage import schema as S

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# The take figures bench_take prints (prefixed ``large_`` for the 1,000,000-row table).
TAKE_FIGURES = (
    "scan_seconds",
    "take_1000_seconds",
    "take_1000_no_index_seconds",
    "take_1000_vs_scan",
    "take_1000_no_index_vs_scan",
    "take_1000_index_speedup",
)
TAKE_RATIOS = {
    "take_1000_vs_scan": ("take_1000_seconds", "scan_seconds"),
    "take_1000_no_index_vs_scan": ("take_1000_no_index_seconds", "scan_seconds"),
    "take_1000_index_speedup": ("take_1000_no_index_seconds", "take_1000_seconds"),
}
# Each ratio the benchmark prints, as (numerator, denominator) of the times it prints.
RATIOS = {
    "write_vs_npsave": ("np_save_seconds", "write_seconds"),
    "lance_write_vs_npsave": ("np_save_seconds", "lance_write_seconds"),
    "read_vs_npload": ("np_load_seconds", "read_seconds"),
    "concurrent_speedup_8": ("one_writer_seconds", "eight_writers_seconds"),
    **TAKE_RATIOS,
    **{f"large_{name}": (f"large_{a}", f"large_{b}") for name, (a, b) in TAKE_RATIOS.items()},
}


@pytest.fixture
def ray_stopped_after():
    yield
    import ray

    ray.shutdown()  # the benchmark starts its own local Ray with kept workers


def test_bench_store_quick_prints_json(ray_stopped_after):
    result = CliRunner().invoke(app, ["bench", "store", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert set(RATIOS) <= set(figures)
    for ratio, (top, bottom) in RATIOS.items():  # each ratio is the one its name says
        assert figures[ratio] == pytest.approx(figures[top] / figures[bottom]), ratio
    assert (figures["n"], figures["d"]) == (4_000, 128)
    assert (figures["large_n"], figures["large_d"]) == (20_000, 16)
    assert figures["exactly_once"] is True
    assert figures["all_rows_once"] is True
    if sys.platform == "linux":
        for name in ("one_writer_busy_cores", "eight_writers_busy_cores"):
            # Busy seconds per wall second; /proc/stat counts 10 ms ticks, so a run of
            # ~50 ms reads up to ~0.4 cores off either way.
            assert 0 <= figures[name] <= figures["cores"] + 1
        assert figures["speedup_8_bound"] == pytest.approx(
            figures["cores"] / figures["one_writer_busy_cores"]
        )


@pytest.fixture
def bench_store(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/bench_store.py`
    import bench_store

    return bench_store


def small_layer(store, bench_store, n: int = 4_000):
    table = embeddings_table("bench", "net", "layer")
    X = np.random.RandomState(0).rand(n, 8).astype(np.float32)
    store.write_unit(table, "u", bench_store.unit_rows(X, 0, "r0"), S.embeddings_schema(8))
    return table


def test_the_take_is_timed_with_the_index_and_without_it(store, bench_store):
    table = small_layer(store, bench_store)
    figures = bench_store.bench_take(store, table, 4_000, prefix="small_")
    assert set(figures) == {f"small_{name}" for name in TAKE_FIGURES}
    ds = store.dataset(table)
    assert not [i for i in ds.list_indices() if i["fields"] == ["sample_index"]]
    indexed = ds.version - 1  # the version before the index was dropped
    take = "sample_index IN (1, 2, 3)"
    assert bench_store.uses_scalar_index(store, table, indexed, take)
    assert not bench_store.uses_scalar_index(store, table, ds.version, take)


def test_no_take_figure_with_the_index_when_optimize_builds_none(store, bench_store, monkeypatch):
    table = small_layer(store, bench_store)
    without = {c: kind for c, kind in storage.store.KEY_INDICES.items() if c != "sample_index"}
    monkeypatch.setattr(storage.store, "KEY_INDICES", without)
    with pytest.raises(RuntimeError, match="0 indices on sample_index"):
        bench_store.bench_take(store, table, 4_000)
