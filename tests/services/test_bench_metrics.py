"""The metrics benchmark runs end to end (small sizes) and its exactness checks hold."""

import json

from typer.testing import CliRunner

from jobs.cli import app


def test_bench_metrics_quick_prints_json():
    result = CliRunner().invoke(app, ["bench", "metrics", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["ami_abs_diff"] <= 1e-9
    assert figures["pairs_max_abs_diff"] <= 1e-9
    assert figures["ncc_cdnv_max_rel_diff"] <= 1e-9
    assert figures["ncc_cdnv_bytes_read"] == figures["ncc_cdnv_bytes_stored"]
    assert {"ami_speedup", "pairs_speedup", "ncc_cdnv_seconds"} <= set(figures)


def test_unknown_benchmark():
    result = CliRunner().invoke(app, ["bench", "nope"])
    assert result.exit_code == 2
    assert "unknown benchmark" in result.output
