"""CKA between runs stored in different sample orders, and the memory of a streamed compare."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from jobs.compare import _sample_orders, layer_pair_cka
from services.metrics import linear_cka
from storage import EmbeddingStore
from storage import schema as S

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_consistency import ARCH, EXPERIMENT, streamed, write_runs  # noqa: E402


def sorted_layer(store, side, layer):
    rows = store.embeddings(
        EXPERIMENT, ARCH, layer, columns=["sample_index", S.EMBEDDING], run_id=side.run_id
    )
    order = np.argsort(rows.column("sample_index").to_numpy())
    return np.stack(rows.column(S.EMBEDDING).to_numpy(zero_copy_only=False))[order]


@pytest.mark.parametrize("n", [50, 4096 + 7])  # one partial block; several blocks and a rest
def test_runs_in_different_sample_orders_are_read_in_one_order(tmp_path, n):
    store = EmbeddingStore(str(tmp_path / "store"))
    a, b = write_runs(store, n, (3, 9), shuffled=True)
    layers = {a: ["layer00", "layer01"], b: ["layer00", "layer01"]}
    orders = _sample_orders(store, [a, b], layers)
    assert orders[(a, "layer00")] is None and orders[(b, "layer01")] is not None
    got_a, got_b, matrix = layer_pair_cka(store, a, b)
    assert got_a == got_b == ["layer00", "layer01"]
    for p, la in enumerate(got_a):
        for q, lb in enumerate(got_b):
            X, Y = sorted_layer(store, a, la), sorted_layer(store, b, lb)
            assert matrix[p, q] == pytest.approx(linear_cka(X, Y), rel=1e-9, abs=1e-12)
    # the same data stored in one order gives the same values
    same = EmbeddingStore(str(tmp_path / "same"))
    write_runs(same, n, (3, 9))
    assert np.allclose(layer_pair_cka(same, a, b)[2], matrix, rtol=1e-9, atol=1e-12)


def test_a_side_in_another_order_is_not_the_reference(tmp_path):
    store = EmbeddingStore(str(tmp_path / "store"))
    a, b = write_runs(store, 30, (4,), shuffled=True)
    forward = layer_pair_cka(store, a, b)[2]
    backward = layer_pair_cka(store, b, a)[2]  # b's order is now the reference
    assert backward == pytest.approx(forward.T, rel=1e-9)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("shuffled", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_peak_memory_of_a_compare_does_not_grow_with_the_samples(tmp_path, shuffled):
    # Reading the second run whole (as compares of runs in different orders once did)
    # would add 2 x 196,608 x 256 x 4 B = 384 MiB at 4x the rows; streamed, the peak
    # moved by 18 MiB (Lance reads ahead more of larger tables up to about 64k rows
    # here, so both sizes are past that)
    peaks = {}
    for n in (65_536, 4 * 65_536):
        root = tmp_path / str(n)
        write_runs(EmbeddingStore(str(root)), n, (256,), shuffled=shuffled)
        peaks[n] = streamed(str(root))["peak_kib"] / 1024
    assert peaks[4 * 65_536] - peaks[65_536] < 64, peaks  # MiB


def test_bench_consistency_quick_agrees_with_the_per_pair_loop():
    result = CliRunner().invoke(
        app, ["bench", "consistency", "--quick", "--json", "--shuffled", "1"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["shuffled"] and figures["layers"] == 16
    assert figures["max_abs_diff"] < 1e-9
    # the per-pair loop asks for every table once per partner layer, the stream once
    assert figures["per_pair_gb_rchar"] > 8 * figures["streamed_gb_rchar"]
    assert figures["streamed_peak_rss_mib"] > 0
