"""The serve benchmark runs end to end (small sizes, a uvicorn on 127.0.0.1 for 2 s of
load) and prints every figure issue 11 names."""

import json

from typer.testing import CliRunner

from jobs.cli import app


def test_bench_serve_quick_prints_json():
    result = CliRunner().invoke(app, ["bench", "serve", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    asked = {
        "layer_http_vs_local",
        "take_1000_p50_ms",
        "take_1000_p99_ms",
        "take_1000_vs_layer",
        "metrics_rps",
        "metrics_p99_ms",
        "metrics_errors",
        "neighbors_recall_at_10",
        "neighbors_speedup",
    }
    assert asked <= set(figures)
    assert figures["metrics_errors"] == 0 and figures["metrics_requests"] > 0
    assert figures["metrics_rows_per_answer"] == 25  # the answers held the rows asked for
    assert figures["index_type"] == "IVF_HNSW_SQ"
    assert figures["neighbors_recall_at_10"] >= 0.9
    assert figures["take_1000_p50_ms"] <= figures["take_1000_p99_ms"]
    for name in (
        "layer_http_vs_local",
        "layer_reference_vs_local",
        "layer_http_vs_reference",
        "neighbors_speedup",
        "neighbors_http_speedup",
    ):
        assert figures[name] > 0
