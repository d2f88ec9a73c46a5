"""Row queries of storage.queries: rows named by sample_index are found through the
scalar indices and taken by row id, and come out as a filtered scan returns them."""

import lance
import pyarrow as pa
import pytest

import storage.queries as Q
from storage import embeddings_table
from storage import schema as S
from storage.filters import where
from tests.factories import embedding_unit as rows

TABLE = embeddings_table("exp", "net", "fc")
EXPERIMENT = {"experiment_id": "exp", "name": "exp", "spec": "{}", "created_at": None}


def _layer_store(store):
    """Three units (three fragments) of one layer, one unit deleted, then optimized and
    one more unit appended: fragments of several generations."""
    store.write_unit(
        S.EXPERIMENTS,
        "exp",
        pa.Table.from_pylist([EXPERIMENT], schema=S.EXPERIMENTS_SCHEMA.remove(0)),
    )
    first, _ = rows(30)
    store.write_unit(TABLE, "u1", first, S.embeddings_schema(4))
    store.write_unit(TABLE, "u2", rows(30, split="train", run="r1", start=5, seed=1)[0])
    store.write_unit(TABLE, "u3", rows(30, run="r2", start=10, seed=2)[0])
    store.delete_units(TABLE, ["u2"])
    store.optimize(TABLE)
    store.write_unit(TABLE, "u4", rows(30, split="train", run="r3", start=20, seed=3)[0])
    return store


def _read(stream: Q.RowStream) -> pa.Table:
    return pa.Table.from_batches(list(stream.batches), schema=stream.schema)


@pytest.mark.parametrize(
    "conditions, limit, offset",
    [
        ({"sample_index": [0, 3, 12, 22, 25, 29, 31, 40, 49]}, None, 0),
        ({"sample_index": [12, 22, 25, 29], "split": "test"}, None, 0),
        ({"sample_index": list(range(0, 60, 2))}, 7, 3),
        ({"sample_index": [1000, 2000]}, None, 0),
    ],
)
def test_rows_by_sample_index_equal_a_filtered_scan_in_table_order(
    store, monkeypatch, conditions, limit, offset
):
    _layer_store(store)
    monkeypatch.setattr(Q, "TAKE_BATCH_BYTES", 5 * (4 * 4 + Q.KEY_COLUMN_BYTES))  # 5 rows
    ds = lance.dataset(store.uri(TABLE))
    expected = ds.to_table(columns=Q.EMBEDDING_COLUMNS, filter=where(**conditions))
    expected = expected.slice(offset, limit)
    stream = Q.layer_rows(store, "exp", "net", "fc", limit=limit, offset=offset, **conditions)
    got = _read(stream)
    assert stream.rows == expected.num_rows == got.num_rows
    assert got.equals(expected)
    if expected.num_rows > 5:
        assert len(list(Q.layer_rows(store, "exp", "net", "fc", **conditions).batches)) > 1


def test_row_ids_are_put_back_in_scan_order(store):
    _layer_store(store)
    ds = lance.dataset(store.uri(TABLE))
    ids = ds.to_table(columns=[], with_row_id=True).column(Q.ROW_ID).to_numpy()
    shuffled = ids[::-1].copy()
    assert (Q._in_table_order(ds, shuffled) == ids).all()


def test_the_checked_names_follow_the_store(store, monkeypatch):
    _layer_store(store)
    Q.check_layer(store, "exp", "net", "fc")
    other = {"experiment_id": "exp2", "name": "exp2", "spec": "{}", "created_at": None}
    store.write_unit(
        S.EXPERIMENTS, "exp2", pa.Table.from_pylist([other], schema=S.EXPERIMENTS_SCHEMA.remove(0))
    )
    assert Q.check_experiment(store, "exp2") == "exp2"  # a new version of the table: at once
    Q.check_layer(store, "exp", "net", "fc")  # listed anew with it, and remembered
    store.write_unit(
        embeddings_table("exp", "net", "fc9"), "u9", rows(5)[0], S.embeddings_schema(4)
    )
    with pytest.raises(Q.NotFoundError, match="fc9"):  # layers are remembered for a while
        Q.check_layer(store, "exp", "net", "fc9")
    monkeypatch.setattr(Q, "LAYER_NAMES_TTL_S", 0.0)
    Q.check_layer(store, "exp", "net", "fc9")
    store.delete_experiment("exp2")
    with pytest.raises(Q.NotFoundError, match="'exp2' is not in the store"):
        Q.check_experiment(store, "exp2")


def test_an_experiment_written_again_is_listed_anew_at_once(store):
    _layer_store(store)
    Q.check_layer(store, "exp", "net", "fc")  # its layers remembered
    store.delete_experiment("exp")
    store.write_unit(
        S.EXPERIMENTS,
        "exp",
        pa.Table.from_pylist([EXPERIMENT], schema=S.EXPERIMENTS_SCHEMA.remove(0)),
    )
    store.write_unit(
        embeddings_table("exp", "net", "fc2"), "u1", rows(5)[0], S.embeddings_schema(4)
    )
    with pytest.raises(Q.NotFoundError, match=r"stored layers are \['fc2'\]"):
        Q.check_layer(store, "exp", "net", "fc")  # within LAYER_NAMES_TTL_S


def test_layer_scopes_are_the_distinct_runs_epochs_and_splits_of_a_version(store):
    _layer_store(store)  # r0 test, r1 train (deleted), r2 test, r3 train; all epoch 1
    ds = lance.dataset(store.uri(TABLE))
    expected = [Q.Scope("r0", 1, "test"), Q.Scope("r2", 1, "test"), Q.Scope("r3", 1, "train")]
    assert Q.layer_scopes(ds) == expected
    store.write_unit(TABLE, "u5", rows(3, run="r0", split="train")[0])
    assert Q.layer_scopes(lance.dataset(store.uri(TABLE))) == sorted(
        [*expected, Q.Scope("r0", 1, "train")]
    )
    assert Q.layer_scopes(ds) == expected  # the older version keeps its answer


def test_layer_scopes_leave_out_rows_with_a_null_key(store):
    _layer_store(store)
    unit, _ = rows(2, run="r0")
    unit = unit.set_column(unit.schema.get_field_index("epoch"), "epoch", pa.nulls(2, pa.int32()))
    store.write_unit(TABLE, "u6", unit)
    scopes = Q.layer_scopes(lance.dataset(store.uri(TABLE)))
    assert [s.run_id for s in scopes] == ["r0", "r2", "r3"]  # r0 once: its null rows left out
    assert None not in {s.epoch for s in scopes}
