"""Embeddings read straight from the Lance files (storage.vectors), rows found through
the sample maps (storage.sample_rows) and key columns from their remembered copies
(storage.row_keys) equal what Lance itself answers."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import storage.queries as Q
import storage.row_keys as RK
import storage.sample_rows as SR
from storage import schema as S
from storage.filters import where
from storage.row_keys import key_columns
from storage.sample_rows import sample_row_ids
from storage.schema import ROW_ID
from storage.vectors import _layout, take_vectors
from storage.version_cache import VersionCache, one_entry
from tests.factories import embedding_unit as rows
from tests.storage.test_queries import TABLE, _layer_store


def _lance_vectors(ds, ids):
    taken = ds._take_rows(pa.array(ids, type=pa.uint64()), [S.EMBEDDING]).column(0)
    return np.stack(taken.to_numpy(zero_copy_only=False))


def test_vectors_equal_lance_take_across_fragments_and_deletions(store):
    _layer_store(store)  # four fragments of three generations, one unit deleted
    ds = lance.dataset(store.uri(TABLE))
    assert _layout(ds, S.EMBEDDING) is not None  # read from the files, not by Lance
    ids = ds.to_table(columns=[], with_row_id=True).column(ROW_ID).to_numpy()
    shuffled = np.random.default_rng(0).permutation(ids)
    assert np.array_equal(take_vectors(ds, shuffled), _lance_vectors(ds, shuffled))
    assert take_vectors(ds, ids[:0]).shape == (0, 4)


@pytest.mark.parametrize("version", ["2.0", "2.1"])  # flat pages; full-zip pages
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_multi_page_files_and_float16(tmp_path, version, dtype):
    n, d = 30_000, 400  # 48 MB of float32: several pages of a 2.0 file
    values = np.random.default_rng(1).normal(size=(n, d)).astype(np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(dtype).ravel()), d)
    ds = lance.write_dataset(
        pa.table({S.EMBEDDING: vectors}), tmp_path / "t", data_storage_version=version
    )
    layout = _layout(ds, S.EMBEDDING)
    assert layout is not None and layout.dtype == dtype
    if dtype is np.float32 and version == "2.0":
        assert len(next(iter(layout.fragments.values())).page_rows) > 2  # several pages
    ids = np.random.default_rng(2).choice(n, 500, replace=False).astype(np.uint64)
    assert np.array_equal(take_vectors(ds, ids), values.astype(dtype)[ids.astype(np.int64)])


def test_layouts_it_does_not_know_are_left_to_lance(tmp_path):
    values = np.arange(40, dtype=np.float32).reshape(10, 4)
    valid = pa.array([i != 4 for i in range(10)])  # a null row: pages with validity
    with_nulls = pa.FixedSizeListArray.from_arrays(
        pa.array(values.ravel()), 4, mask=pc.invert(valid)
    )
    ds = lance.write_dataset(pa.table({S.EMBEDDING: with_nulls}), tmp_path / "nulls")
    assert _layout(ds, S.EMBEDDING) is None
    ids = np.array([7, 2, 9], dtype=np.uint64)
    assert np.array_equal(take_vectors(ds, ids), values[[7, 2, 9]])
    as_float64 = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel().astype(float)), 4)
    ds = lance.write_dataset(pa.table({S.EMBEDDING: as_float64}), tmp_path / "float64")
    assert _layout(ds, S.EMBEDDING) is None  # only float32 and float16 are read directly
    assert np.array_equal(take_vectors(ds, ids), values[[7, 2, 9]])


def test_a_row_id_of_another_version_is_refused(store):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    with pytest.raises(ValueError, match="not rows of this version"):
        take_vectors(ds, np.array([(77 << 32) + 1], dtype=np.uint64))


@pytest.mark.parametrize(
    "conditions",
    [
        {},  # several runs share sample indices: every matching row
        {"split": "test"},
        {"run_id": "r2", "seed": 0},
    ],
)
def test_sample_map_finds_the_rows_the_scalar_index_finds(store, conditions):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    samples = np.array([0, 3, 12, 12, 22, 29, 31, 49, 1000])
    expected = ds.to_table(
        columns=[], filter=where(**conditions, sample_index=samples.tolist()), with_row_id=True
    )
    got = sample_row_ids(ds, samples, where(**conditions))
    assert sorted(got.tolist()) == sorted(expected.column(ROW_ID).to_pylist())
    assert len(sample_row_ids(ds, np.array([5000]), where(**conditions))) == 0


def test_a_layer_too_large_for_the_maps_is_asked_of_lance(store, monkeypatch):
    _layer_store(store)
    monkeypatch.setattr(SR, "MAPS", VersionCache(16 * 10))  # ten rows
    ds = lance.dataset(store.uri(TABLE))
    assert sample_row_ids(ds, np.array([3]), None) is None
    got = pa.Table.from_batches(
        list(Q.layer_rows(store, "exp", "net", "fc", sample_index=[3, 12]).batches)
    )
    expected = ds.to_table(columns=Q.EMBEDDING_COLUMNS, filter="sample_index IN (3, 12)")
    assert got.equals(expected)


def test_maps_are_kept_within_their_budget(store, monkeypatch):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    monkeypatch.setattr(SR, "MAPS", VersionCache(16 * 70))  # one map of ~60 rows at a time
    for split in ("test", "train", None):
        sample_row_ids(ds, np.array([3]), where(split=split))
        assert SR.MAPS.used <= SR.MAPS.budget
    assert len(SR.MAPS) == 1


def test_a_new_version_gets_a_new_map(store):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    before = sample_row_ids(ds, np.array([55]), where(run_id="r9"))
    assert len(before) == 0
    store.write_unit(TABLE, "u9", rows(5, run="r9", start=55)[0])
    ds = lance.dataset(store.uri(TABLE))
    assert len(sample_row_ids(ds, np.array([55]), where(run_id="r9"))) == 1


def test_a_table_deleted_and_written_again_is_read_anew(store):
    """Written the same way, it reaches the same version number: the caches keyed on a
    version must not answer from the deleted table."""
    answers = []
    for seed in (0, 7):
        table, values = rows(30, seed=seed)
        store.write_unit(TABLE, "unit", table, S.embeddings_schema(4))
        ds = lance.dataset(store.uri(TABLE))
        ids = ds.to_table(columns=[], with_row_id=True).column(ROW_ID).to_numpy()
        found = sample_row_ids(ds, np.array([0, 1, 2]), where(run_id="r0"))
        answers.append((ds.version, take_vectors(ds, ids[:3]), values[:3], found, ids[:3]))
        store.delete_experiment("exp")
    (v0, got0, want0, _, _), (v1, got1, want1, found1, ids1) = answers
    assert v0 == v1 and not np.array_equal(want0, want1)  # the case that mattered
    assert np.array_equal(got0, want0) and np.array_equal(got1, want1)
    assert sorted(found1.tolist()) == sorted(ids1.tolist())


def test_row_ids_follow_the_manifest_order_of_their_fragments():
    class Fragment:
        def __init__(self, fragment_id):
            self.fragment_id = fragment_id

    class Dataset:  # only what _in_table_order reads: fragments in manifest order
        def get_fragments(self):
            return [Fragment(12), Fragment(10), Fragment(11)]

    ids = np.array([(10 << 32) + 1, (12 << 32) + 5, (11 << 32), (10 << 32), (12 << 32)])
    expected = [(12 << 32), (12 << 32) + 5, (10 << 32), (10 << 32) + 1, (11 << 32)]
    assert Q._in_table_order(Dataset(), ids).tolist() == expected


def _lance_keys(ds, ids, columns):
    return ds._take_rows(pa.array(ids, type=pa.uint64()), columns)


KEY_COLUMNS = [name for name in S.embeddings_schema(4).names if name != S.EMBEDDING]


@pytest.mark.parametrize("batch_rows", [RK.COPY_BATCH_ROWS, 7])  # one scan batch; many
def test_key_columns_equal_lance_take_across_fragments_and_deletions(
    store, monkeypatch, batch_rows
):
    _layer_store(store)  # four fragments of three generations, one unit deleted
    monkeypatch.setattr(RK, "COPIES", VersionCache(RK.ROW_KEYS_BYTES))
    monkeypatch.setattr(RK, "COPY_BATCH_ROWS", batch_rows)
    ds = lance.dataset(store.uri(TABLE))
    ids = ds.to_table(columns=[], with_row_id=True).column(ROW_ID).to_numpy()
    shuffled = np.random.default_rng(0).permutation(ids)[:50]
    got = key_columns(ds, shuffled, KEY_COLUMNS)
    assert len(RK.COPIES) == 1  # answered from the remembered copy, not by Lance
    assert got.equals(_lance_keys(ds, shuffled, KEY_COLUMNS))  # values, order and types
    some = ["sample_index", "run_id", "superclass"]
    assert key_columns(ds, ids[:0], some).equals(_lance_keys(ds, ids[:0], some))
    with pytest.raises(ValueError, match="not rows of this version"):
        key_columns(ds, np.array([(77 << 32) + 1], dtype=np.uint64), some)


def test_a_layer_too_large_for_a_key_copy_is_asked_of_lance(store, monkeypatch):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    monkeypatch.setattr(RK, "COPIES", VersionCache(RK.BYTES_PER_ROW * 10))  # ten rows
    ids = ds.to_table(columns=[], with_row_id=True).column(ROW_ID).to_numpy()[::7]
    assert key_columns(ds, ids, KEY_COLUMNS).equals(_lance_keys(ds, ids, KEY_COLUMNS))
    assert len(RK.COPIES) == 0


def test_a_new_version_gets_a_new_key_copy(store):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    key_columns(ds, ds.to_table(columns=[], with_row_id=True).column(ROW_ID).to_numpy(), ["seed"])
    store.write_unit(TABLE, "u9", rows(5, run="r9", start=55)[0])
    ds = lance.dataset(store.uri(TABLE))
    new = ds.to_table(columns=[], with_row_id=True, filter="run_id = 'r9'").column(ROW_ID)
    got = key_columns(ds, new.to_numpy(), ["run_id", "sample_index"])
    assert got.column("run_id").to_pylist() == ["r9"] * 5
    assert got.column("sample_index").to_pylist() == list(range(55, 60))


class _Value:
    def __init__(self, nbytes):
        self.nbytes = nbytes


def test_version_cache_keeps_the_latest_values_within_its_budget():
    cache = VersionCache(100)
    built = []

    def get(key, nbytes):
        return cache.get(key, lambda: built.append(key) or _Value(nbytes), lambda: nbytes)

    for key in "abc":
        get(key, 40)
    assert len(cache) == 2 and cache.used == 80  # "a" dropped for "c"
    get("b", 40)  # kept: not built again, and now the most recent
    get("d", 40)  # drops "c", the least recently asked
    get("b", 40)
    get("c", 40)
    assert built == ["a", "b", "c", "d", "c"]
    estimates = []
    assert cache.get("big", lambda: _Value(101), lambda: estimates.append(1) or 101) is None
    assert cache.get("big", lambda: _Value(101), lambda: estimates.append(1) or 101) is None
    assert estimates == [1]  # the answer "too large" is remembered
    assert cache.used <= cache.budget


def test_a_value_larger_than_its_estimate_is_not_kept_nor_built_again():
    cache = VersionCache(100)
    built = []

    def get(key, estimate, nbytes):
        return cache.get(key, lambda: built.append(key) or _Value(nbytes), lambda: estimate)

    get("a", 40, 40)
    assert get("b", 60, 150).nbytes == 150  # answered this once
    assert get("b", 60, 150) is None  # then known as too large
    get("a", 40, 40)
    assert built == ["a", "b"] and len(cache) == 1  # "a" kept throughout


def test_threads_asking_for_one_missing_value_build_it_once():
    cache = VersionCache(100)
    started, release, builds = threading.Event(), threading.Event(), []

    def build():
        builds.append(1)
        started.set()
        release.wait(10)
        return _Value(10)

    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(cache.get, "k", build, lambda: 10) for _ in range(8)]
        started.wait(10)
        time.sleep(0.05)  # the other seven reach the cache meanwhile
        release.set()
        values = [answer.result(10) for answer in answers]
    assert len(builds) == 1 and all(value is values[0] for value in values)

    def fails():
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        cache.get("bad", fails, lambda: 10)
    assert cache.get("bad", lambda: _Value(10), lambda: 10).nbytes == 10  # not remembered


def test_an_entry_counted_cache_keeps_none_answers_and_counts_entries():
    cache = VersionCache(2, size=one_entry)
    built = []

    def get(key):
        return cache.get(key, lambda: built.append(key))  # None: e.g. "no vector index"

    for key in "aab":
        assert get(key) is None
    get("c")  # drops "a"
    get("a")
    assert built == ["a", "b", "c", "a"] and cache.used == len(cache) == 2
