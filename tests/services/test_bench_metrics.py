"""The metrics benchmark runs end to end (small sizes) and what it reports holds."""

import json

import pytest
from typer.testing import CliRunner

from jobs.cli import app

DISTRIBUTIONS = ("uniform", "lognormal", "ward")
# at the quick sizes ours is 30-130x scikit-learn here; 2x leaves room for a busy machine
MIN_QUICK_SPEEDUP = 2.0


@pytest.fixture(scope="module")
def figures():
    result = CliRunner().invoke(app, ["bench", "metrics", "--quick", "--json", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_scores_equal_sklearn_and_beat_it(figures, distribution):
    assert figures[f"{distribution}_ami_abs_diff"] <= 1e-9
    assert figures[f"{distribution}_pairs_max_abs_diff"] <= 1e-9
    assert figures[f"{distribution}_ami_speedup"] >= MIN_QUICK_SPEEDUP
    assert figures[f"{distribution}_pairs_speedup"] >= MIN_QUICK_SPEEDUP


def test_skewed_distributions_are_skewed(figures):
    uniform_largest = figures["uniform_largest_cluster"]
    for distribution in ("lognormal", "ward"):
        assert figures[f"{distribution}_largest_cluster"] > 4 * uniform_largest
        assert figures[f"{distribution}_distinct_sizes"] > figures["uniform_distinct_sizes"]


def test_every_pair_is_timed(figures):
    assert figures["labelings"] == 8
    assert figures["pairs"] == 28
    assert figures["repeats"] == 2


def test_ncc_cdnv_reads_each_table_once(figures):
    assert figures["ncc_cdnv_max_rel_diff"] <= 1e-9
    assert figures["ncc_cdnv_io_counter"] in ("read_bytes", "rchar")
    # every embedding byte comes from storage, and less than twice what is on disk: one pass
    for key in ("ncc_cdnv_bytes_read", "ncc_cdnv_whole_table_bytes_read"):
        assert figures["ncc_cdnv_embedding_bytes"] <= figures[key]
        assert figures[key] < 1.5 * figures["ncc_cdnv_bytes_on_disk"]


def test_unknown_benchmark():
    result = CliRunner().invoke(app, ["bench", "nope"])
    assert result.exit_code == 2
    assert "unknown benchmark" in result.output
