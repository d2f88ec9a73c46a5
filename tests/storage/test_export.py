"""Exporting a layer: every format round-trips, streams in batches, and fails leaving no file."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import storage.export
from storage import StoreError, embeddings_table
from storage import schema as S
from storage.export import export_layer
from tests.factories import embedding_unit as rows

TABLE = embeddings_table("exp", "net", "fc")


@pytest.fixture
def layer(store, monkeypatch):
    """Two runs of one layer, exported in batches of a few rows."""
    monkeypatch.setattr(storage.export, "EXPORT_BATCH_BYTES", 100)
    monkeypatch.setattr(storage.export, "SCAN_BATCH_BYTES", 100)
    first, first_values = rows(10, dim=8)
    second, second_values = rows(7, dim=8, run="r1", start=10, seed=1)
    store.write_unit(TABLE, "u1", first, S.embeddings_schema(8))
    store.write_unit(TABLE, "u2", second)
    return store, first_values, second_values


def read_back(path) -> pa.Table:
    return pq.read_table(path) if path.suffix == ".parquet" else feather.read_table(path)


def written_batches(path) -> int:
    """Row groups of a Parquet file, record batches of an Arrow IPC file."""
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).num_row_groups
    with pa.ipc.open_file(path) as reader:
        return reader.num_record_batches


def test_npy_export_streams_the_rows_in_store_order(layer, tmp_path):
    store, first, second = layer
    seen = []
    shape = export_layer(
        store, "exp", "net", "fc", tmp_path / "x.npy", progress=lambda *p: seen.append(p)
    )
    assert shape == (17, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.vstack([first, second]))
    assert len(seen) > 2 and seen[-1] == (17, 17)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    export_layer(store, "exp", "net", "fc", tmp_path / "r1.npy", run_id="r1")
    np.testing.assert_array_equal(np.load(tmp_path / "r1.npy"), second)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_table_exports_hold_every_column_but_the_unit_key(layer, tmp_path, suffix):
    store, _, second = layer
    path = tmp_path / f"x{suffix}"
    assert export_layer(store, "exp", "net", "fc", path, run_id="r1") == (7, 8)
    got = read_back(path)
    expected = store.embeddings("exp", "net", "fc", run_id="r1").drop_columns([S.UNIT_KEY])
    assert got.equals(expected)
    # EXPORT_BATCH_BYTES of 100 holds one row of 8 floats and its keys: a batch a row.
    assert written_batches(path) == 7


def test_export_reads_a_tagged_version(layer, tmp_path):
    store, first, _ = layer
    store.tag(TABLE, "two-runs")
    store.write_unit(TABLE, "u3", rows(5, dim=8, run="r2", start=17, seed=2)[0])
    export_layer(store, "exp", "net", "fc", tmp_path / "old.npy", version="two-runs")
    assert np.load(tmp_path / "old.npy").shape == (17, 8)


def test_float16_tables_export_float32_npy(store, tmp_path):
    table, values = rows(6, dim=8)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(8, "float16"))
    export_layer(store, "exp", "net", "fc", tmp_path / "x.npy")
    got = np.load(tmp_path / "x.npy")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values.astype(np.float16).astype(np.float32))


def test_a_failed_export_leaves_no_file_and_keeps_an_older_one(layer, tmp_path):
    store, _, _ = layer
    path = tmp_path / "x.parquet"
    path.write_bytes(b"an earlier export")

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_layer(store, "exp", "net", "fc", path, progress=interrupt)
    assert path.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.glob("x*")) == ["x.parquet"]


def test_bad_exports_name_the_problem(layer, tmp_path):
    store, _, _ = layer
    with pytest.raises(StoreError, match="use .npy, .parquet or .arrow"):
        export_layer(store, "exp", "net", "fc", tmp_path / "x.csv")
    with pytest.raises(StoreError, match="no embeddings match run_id = 'nope'"):
        export_layer(store, "exp", "net", "fc", tmp_path / "x.npy", run_id="nope")
    with pytest.raises(StoreError, match="stored layers are \\['fc'\\]"):
        export_layer(store, "exp", "net", "conv", tmp_path / "x.npy")
    assert list(tmp_path.glob("x*")) == []


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    import storage.export
    from storage import EmbeddingStore
    from storage.export import export_layer

    storage.export.EXPORT_BATCH_BYTES = 4 << 20  # a sixteenth of the layer

    store = EmbeddingStore(sys.argv[1])
    export_layer(store, "exp", "net", "fc", sys.argv[2])  # warm-up: imports, Lance's pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark
    before = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
    export_layer(store, "exp", "net", "fc", sys.argv[2])
    peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    print((peak - before) * 1024)
    """
)


@pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="reads peak RSS from Linux's /proc"
)
@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_export_memory_stays_far_below_the_layer(store, tmp_path, suffix):
    """Streaming holds Lance's pages in flight and a batch: 22-80 MiB over the start for
    this 256 MiB layer on the development machine, where reading it whole needs 256 MiB."""
    n, dim = 65_536, 1_024  # 256 MiB of float32
    values = np.random.RandomState(0).rand(n, dim).astype(np.float32)
    table = S.embedding_rows(
        values,
        sample_index=np.arange(n),
        subclass=np.zeros(n),
        superclass=np.zeros(n),
        experiment_id="exp",
        run_id="r0",
        dataset_id="d",
        arch="net",
        seed=0,
        epoch=1,
        split="test",
    )
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(dim))
    out = tmp_path / f"x{suffix}"
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, store.root, str(out)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    extra = int(result.stdout.split()[-1])
    assert extra < values.nbytes / 2, f"{extra / 2**20:.1f} MiB over the start"
