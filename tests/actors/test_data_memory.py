"""Memory of the data path does not grow with the number of images."""

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_data import extraction_peak, make_tree  # noqa: E402


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_peak_rss_of_training_and_extraction_is_flat_in_the_number_of_images(tmp_path):
    # both sizes exceed one evaluation batch (512), the largest thing held per step; each
    # peak is the smaller of two child processes' (a busy machine only ever adds to a peak:
    # one full-suite run measured 1.135x where single runs measure 1.03-1.05x)
    peaks = {}
    for n in (800, 3200):
        root, hierarchy = make_tree(tmp_path / str(n), n)
        runs = []
        for attempt in range(2):
            store = tmp_path / f"store{n}-{attempt}"
            measured = extraction_peak(root, hierarchy, store, size=16)
            assert measured["images"] == n and measured["rows"] == 2 * 6 * n // 2  # 6 layers
            runs.append(measured["peak_kib"])
        peaks[n] = min(runs)
    assert peaks[3200] <= 1.1 * peaks[800], peaks


def test_bench_data_quick_prints_every_figure():
    result = CliRunner().invoke(app, ["bench", "data", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["large_images"] == 3 * figures["small_images"]
    assert figures["large_rows_extracted"] == 6 * figures["large_images"]
    for name in ("train", "eval"):
        assert figures[f"{name}_images_per_s"] == pytest.approx(
            figures[f"{name}_loader_vs_imagefolder"] * figures[f"{name}_imagefolder_images_per_s"]
        )
