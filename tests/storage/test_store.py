import numpy as np
import pyarrow as pa
import pytest

from storage import EmbeddingStore, StoreError, embedding_matrix, embeddings_table
from storage import schema as S
from storage.filters import where
from tests.factories import embedding_unit as rows

TABLE = embeddings_table("exp", "net", "fc")


def test_roundtrip_and_filters(store):
    table, values = rows(10)
    assert store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    other, _ = rows(5, split="train", run="r1", seed=1)
    assert store.write_unit(TABLE, "u2", other)
    got = store.embeddings("exp", "net", "fc", run_id="r0", split="test")
    np.testing.assert_array_equal(embedding_matrix(got), values)
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert store.embeddings("exp", "net", "fc", superclass=1).num_rows == 5 + 2
    assert store.committed_keys(TABLE) == {"u1", "u2"}


def test_committing_a_key_twice_adds_nothing(store):
    table, _ = rows(10)
    assert store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    version = store.version(TABLE)
    pending = store.write_fragments(TABLE, "u1", table)
    assert store.commit(pending) is False
    assert store.write_unit(TABLE, "u1", table) is False
    assert store.version(TABLE) == version
    assert store.read(TABLE).num_rows == 10


def test_uncommitted_fragments_are_invisible(store):
    table, _ = rows(10)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    store.write_fragments(TABLE, "u2", rows(7, start=10)[0])  # written, never committed
    assert store.read(TABLE).num_rows == 10
    assert store.committed_keys(TABLE) == {"u1"}


def test_one_unit_from_many_batches_commits_atomically(store):
    batches = [rows(4, start=4 * i, seed=i)[0].to_batches()[0] for i in range(5)]
    unit = store.write_fragments(TABLE, "stream", iter(batches), S.embeddings_schema(4))
    assert unit.n_rows == 20
    assert not store.exists(TABLE)  # data files written, but no version yet
    assert store.commit(unit)
    assert store.read(TABLE).num_rows == 20


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda t: t.set_column(10, "embedding", _with_nan(t)), "NaN or Inf"),
        (lambda t: rows(10, dim=5)[0], "dimension 5 does not match"),
        (lambda t: t.drop_columns(["run_id"]), "lacks column 'run_id'"),
        (lambda t: t.set_column(7, "sample_index", pa.array(["x"] * 10)), "does not convert"),
    ],
)
def test_bad_input_raises_one_clear_error_and_leaves_store_unchanged(store, corrupt, message):
    table, _ = rows(10)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    version = store.version(TABLE)
    with pytest.raises(StoreError, match=message):
        store.write_unit(TABLE, "bad", corrupt(table))
    assert store.version(TABLE) == version
    assert store.read(TABLE).num_rows == 10


def _with_nan(table):
    values = embedding_matrix(table).copy()
    values[3, 1] = np.nan
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 4)


def test_unknown_layer_names_the_stored_ones(store):
    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    with pytest.raises(StoreError, match=r"layer 'conv9'.*\['fc'\]"):
        store.embeddings("exp", "net", "conv9")


def test_delete_experiment_removes_rows_and_embeddings(store):
    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    meta = pa.table(
        {
            "experiment_id": ["exp"],
            "name": ["exp"],
            "spec": ["{}"],
            "created_at": pa.array([0], pa.timestamp("us", tz="UTC")),
        }
    )
    store.write_unit(S.EXPERIMENTS, "exp", meta)
    store.delete_experiment("exp")
    assert not store.exists(TABLE)
    assert store.read(S.EXPERIMENTS).num_rows == 0


def test_missing_table_reads_empty_for_fixed_tables(store):
    assert store.read(S.RUNS).num_rows == 0
    with pytest.raises(StoreError, match="does not exist"):
        store.read("embeddings/nope/x/y")


def test_where_quotes_and_skips_none():
    assert where(split="te'st", seed=[0, 1], epoch=None) == "split = 'te''st' AND seed IN (0, 1)"
    assert where() is None


def test_store_has_no_ray_or_torch_imports():
    import ast
    import pathlib

    for path in (pathlib.Path(__file__).parents[2] / "storage").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in getattr(node, "names", [])] + [
                getattr(node, "module", None) or ""
            ]
            assert not any(n.split(".")[0] in ("ray", "torch") for n in names), path


def test_version_history_reads_old_state(store):
    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    first = store.version(TABLE)
    store.write_unit(TABLE, "u2", rows(4, start=3)[0])
    assert store.read(TABLE, version=first).num_rows == 3
    assert store.read(TABLE).num_rows == 7


def test_store_root_is_plain_lance(store):
    import lance

    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    assert lance.dataset(f"{store.root}/{TABLE}").count_rows() == 3
    assert EmbeddingStore(store.root).list_tables() == [TABLE]


def test_float16_tables_halve_the_bytes_and_read_back_as_float32(store):
    table, values = rows(50, dim=8)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(8, "float16"))
    got = store.embeddings("exp", "net", "fc")
    assert got.schema.field("embedding").type == pa.list_(pa.float16(), 8)
    matrix = embedding_matrix(got)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, values, rtol=1e-3)
    assert embedding_matrix(got, dtype=None).dtype == np.float16


def test_optimize_indexes_key_columns_and_keeps_every_row(store):
    for i in range(4):
        store.write_unit(TABLE, f"u{i}", rows(25, start=25 * i, seed=i)[0], S.embeddings_schema(4))
    before = store.read(TABLE).sort_by("sample_index")
    store.optimize(TABLE)
    ds = store.dataset(TABLE)
    indexed = {index["fields"][0] for index in ds.list_indices()}
    assert len(ds.get_fragments()) == 1
    assert {"sample_index", "run_id", "unit_key", "split", "seed"} <= indexed
    assert store.read(TABLE).sort_by("sample_index").equals(before)
    picked = store.read(TABLE, filter="sample_index IN (3, 77, 99)")
    assert sorted(picked.column("sample_index").to_pylist()) == [3, 77, 99]
    assert store.committed_keys(TABLE) == {"u0", "u1", "u2", "u3"}


def test_tags_name_old_versions(store):
    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    store.tag(TABLE, "first")
    store.write_unit(TABLE, "u2", rows(4, start=3)[0])
    assert store.embeddings("exp", "net", "fc", version="first").num_rows == 3
    with pytest.raises(StoreError, match="no version"):
        store.embeddings("exp", "net", "fc", version="nope")


def test_tag_all_snapshots_every_table_and_lists_tags(store):
    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    other = embeddings_table("exp", "net", "conv")
    store.write_unit(other, "u1", rows(2)[0], S.embeddings_schema(4))
    tagged = store.tag_all("before")
    assert tagged == {TABLE: store.version(TABLE), other: store.version(other)}
    store.write_unit(TABLE, "u2", rows(4, start=3)[0])
    assert store.embeddings("exp", "net", "fc", version="before").num_rows == 3
    assert store.embeddings("exp", "net", "fc").num_rows == 7
    store.tag(TABLE, "before")  # tagging again moves the tag
    assert store.tags() == {"before": {TABLE: store.version(TABLE), other: tagged[other]}}


@pytest.mark.parametrize("name", ["", "a b", "../x", "x/y", "12", "\u00e9t\u00e9"])
def test_bad_tag_names_are_refused_and_tag_nothing(store, name):
    store.write_unit(TABLE, "u1", rows(3)[0], S.embeddings_schema(4))
    with pytest.raises(StoreError, match="tag name .* is not allowed"):
        store.tag_all(name)
    assert store.tags() == {}


def test_compact_removes_orphans_and_old_versions_but_no_rows(store):
    import pathlib

    for i in range(3):
        store.write_unit(TABLE, f"u{i}", rows(10, start=10 * i)[0], S.embeddings_schema(4))
    orphan = store.write_fragments(TABLE, "orphan", rows(10, start=30)[0])  # a killed worker's
    data_dir = pathlib.Path(store.uri(TABLE)) / "data"
    orphan_files = {data_dir / f.path for fragment in orphan.fragments for f in fragment.files}
    assert orphan_files and all(path.exists() for path in orphan_files)
    sizes = {path: path.stat().st_size for path in data_dir.iterdir()}
    assert len(sizes) == 3 + len(orphan_files)  # one file per unit, and the orphan's
    removed = store.compact(keep_versions=1)
    left = set(data_dir.iterdir())
    assert len(left) == 1 and not left & set(sizes)  # the units merged, the orphan gone
    assert removed[TABLE] >= sum(sizes.values())
    assert store.read(TABLE).num_rows == 30
    assert store.write_unit(TABLE, "u1", rows(10)[0]) is False  # keys survive compaction


def test_embedding_array_streams_filtered_rows_in_table_order(store, monkeypatch):
    import storage.store

    monkeypatch.setattr(storage.store, "SCAN_BATCH_BYTES", 3 * 4 * 4)  # 3 rows per batch
    table, values = rows(10)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    other, other_values = rows(5, split="train", run="r1", start=10, seed=1)
    store.write_unit(TABLE, "u2", other)
    version = store.version(TABLE)
    store.write_unit(TABLE, "u3", rows(2, run="r2", start=15, seed=2)[0])
    everything = store.embedding_array("exp", "net", "fc")
    np.testing.assert_array_equal(
        everything, embedding_matrix(store.embeddings("exp", "net", "fc"))
    )
    assert everything.shape == (17, 4) and everything.dtype == np.float32
    np.testing.assert_array_equal(
        store.embedding_array("exp", "net", "fc", split="train"), other_values
    )
    odd = store.embedding_array("exp", "net", "fc", run_id="r0", superclass=1)
    np.testing.assert_array_equal(odd, values[1::2])
    assert store.embedding_array("exp", "net", "fc", version=version).shape == (15, 4)
    assert store.embedding_array("exp", "net", "fc", split="val").shape == (0, 4)
    with pytest.raises(StoreError, match="stored layers are \\['fc'\\]"):
        store.embedding_array("exp", "net", "conv9")
    with pytest.raises(StoreError, match="has no version 99"):
        store.embedding_array("exp", "net", "fc", version=99)


def test_embedding_array_of_float16_returns_float32_unless_asked(store):
    table, values = rows(20, dim=8)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(8, "float16"))
    np.testing.assert_allclose(store.embedding_array("exp", "net", "fc"), values, rtol=1e-3)
    assert store.embedding_array("exp", "net", "fc", dtype=None).dtype == np.float16


def test_embedding_matrix_honours_sliced_tables(store):
    table, values = rows(10)
    np.testing.assert_array_equal(embedding_matrix(table.slice(4, 3)), values[4:7])


def test_a_large_table_is_written_as_parallel_fragments_in_row_order(store, monkeypatch):
    import storage.store

    monkeypatch.setattr(storage.store, "PARALLEL_WRITE_MIN_BYTES", 1)
    monkeypatch.setattr(storage.store, "WRITE_BATCH_BYTES", 1_000)  # several batches a slice
    table, values = rows(103, dim=8)
    pending = store.write_fragments(TABLE, "u1", table, S.embeddings_schema(8))
    assert len(pending.fragments) == storage.store.WRITE_THREADS and pending.n_rows == 103
    assert store.commit(pending)
    got = store.embeddings("exp", "net", "fc")
    assert got.column("sample_index").to_pylist() == list(range(103))
    np.testing.assert_array_equal(store.embedding_array("exp", "net", "fc"), values)
    half, half_values = rows(40, dim=8, run="r1", start=103, seed=1)
    store.write_unit(TABLE, "u2", half)
    assert store.embedding_array("exp", "net", "fc", run_id="r1").shape == (40, 8)
    np.testing.assert_array_equal(store.embedding_array("exp", "net", "fc")[103:], half_values)


def test_nan_in_one_parallel_slice_fails_the_unit_and_leaves_the_store_unchanged(
    store, monkeypatch
):
    import storage.store

    store.write_unit(TABLE, "u0", rows(5, dim=8)[0], S.embeddings_schema(8))
    version = store.version(TABLE)
    monkeypatch.setattr(storage.store, "PARALLEL_WRITE_MIN_BYTES", 1)
    monkeypatch.setattr(storage.store, "WRITE_BATCH_BYTES", 1_000)
    table, values = rows(100, dim=8, start=5)
    values[90, 3] = np.inf  # in a later batch of the last slice
    bad = table.set_column(
        table.schema.get_field_index("embedding"),
        "embedding",
        pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 8),
    )
    with pytest.raises(StoreError, match="1 embedding\\(s\\) .* contain NaN or Inf"):
        store.write_unit(TABLE, "u1", bad)
    assert store.version(TABLE) == version and store.read(TABLE).num_rows == 5


def test_delete_experiment_removes_pairs_where_it_is_either_side(store):
    def pair(experiment_a: str, experiment_b: str) -> dict:
        row = {f.name: None for f in S.PAIRS_SCHEMA if f.name != S.UNIT_KEY}
        return row | {"experiment_id": experiment_a, "experiment_b": experiment_b, "value": 1.0}

    rows = [pair("a", "a"), pair("a", "b"), pair("b", "a"), pair("b", "b")]
    store.write_unit(S.PAIRS, "u", pa.Table.from_pylist(rows, schema=S.PAIRS_SCHEMA.remove(0)))
    store.delete_experiment("a")
    left = store.read(S.PAIRS, columns=["experiment_id", "experiment_b"]).to_pylist()
    assert left == [{"experiment_id": "b", "experiment_b": "b"}]
