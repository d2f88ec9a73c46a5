"""The extraction benchmark runs end to end (small sizes) and prints the figures issue 15 names."""

import json

import torch
from typer.testing import CliRunner

from jobs.cli import app


def test_bench_extract_quick_prints_json():
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["bench", "extract", "--quick", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["images"] == 128 and figures["layers"] == 9
    assert figures["forward_images_per_s"] > 0 and figures["extract_vs_forward"] > 0
    parts = figures["write_fragments_s"] + figures["commit_s"] + figures["readout_s"]
    assert abs(figures["forward_s"] + parts - figures["extract_s"]) < 1e-6
