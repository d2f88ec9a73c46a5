"""The store benchmark runs end to end (small sizes) and prints every figure issue 3 names."""

import json
import sys

import pytest
from typer.testing import CliRunner

from jobs.cli import app


@pytest.fixture
def ray_stopped_after():
    yield
    import ray

    ray.shutdown()  # the benchmark starts its own local Ray with kept workers


def test_bench_store_quick_prints_json(ray_stopped_after):
    result = CliRunner().invoke(app, ["bench", "store", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    asked = {
        "read_vs_npload",
        "write_vs_npsave",
        "take_1000_vs_scan",
        "concurrent_speedup_8",
        "exactly_once",
    }
    assert asked <= set(figures)
    assert figures["exactly_once"] is True
    assert figures["all_rows_once"] is True
    for name in ("read_vs_npload", "write_vs_npsave", "lance_write_vs_npsave"):
        assert figures[name] > 0
    if sys.platform == "linux":
        for name in ("one_writer_busy_cores", "eight_writers_busy_cores"):
            # Busy seconds per wall second; /proc/stat counts 10 ms ticks, so a run of
            # ~50 ms reads up to ~0.4 cores off either way.
            assert 0 <= figures[name] <= figures["cores"] + 1
