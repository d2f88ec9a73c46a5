"""The store split into tables / reads / versions / writes keeps every public name, and the
read knobs live in storage.reads."""

import numpy as np

import storage
import storage.reads
import storage.store
from storage import EmbeddingStore, embedding_matrix, embeddings_table
from storage import schema as S
from tests.factories import embedding_unit as rows

TABLE = embeddings_table("exp", "net", "fc")
METHODS = (
    "uri dataset exists version list_tables is_object_store check_reachable "
    "write_fragments commit write_unit optimize compact compact_table tag tag_all tags "
    "committed_keys delete_experiment delete_units read layer_dataset embeddings "
    "embedding_batches embedding_array scan"
).split()
STORE_MODULE_NAMES = (
    "ROWS_PER_GROUP SCAN_BATCH_BYTES LOCAL_SCAN_IO_BUFFER_BYTES PARALLEL_WRITE_MIN_BYTES "
    "WRITE_THREADS WRITE_BATCH_BYTES STORAGE_FORMAT TAG_NAME KEY_INDICES StoreError "
    "CommitRetryPolicy PendingUnit EmbeddingStore embedding_matrix"
).split()


def test_every_name_of_the_single_module_store_is_still_there():
    assert all(
        callable(getattr(EmbeddingStore, name, None)) or name == "is_object_store"
        for name in METHODS
    )
    assert all(hasattr(storage.store, name) for name in STORE_MODULE_NAMES)
    assert storage.StoreError is storage.store.StoreError is storage.reads.StoreError
    assert storage.embedding_matrix is storage.reads.embedding_matrix


def test_embedding_array_copies_many_small_batches_in_table_order(store, monkeypatch):
    monkeypatch.setattr(storage.reads, "SCAN_BATCH_BYTES", 3 * 4 * 4)  # 3 rows per batch
    table, values = rows(10)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    other, other_values = rows(5, split="train", run="r1", start=10, seed=1)
    store.write_unit(TABLE, "u2", other)
    batches = list(store.scan(store.layer_dataset("exp", "net", "fc"), [S.EMBEDDING], None, 3))
    assert len(batches) >= 5
    everything = store.embedding_array("exp", "net", "fc")
    np.testing.assert_array_equal(everything, np.concatenate([values, other_values]))
    np.testing.assert_array_equal(
        everything, embedding_matrix(store.embeddings("exp", "net", "fc"))
    )


def test_scan_passes_limit_and_offset_to_lance(store):
    table, values = rows(10)
    store.write_unit(TABLE, "u1", table, S.embeddings_schema(4))
    ds = store.layer_dataset("exp", "net", "fc")
    got = list(
        store.scan(ds, [S.EMBEDDING, "sample_index"], "superclass = 0", 2, limit=3, offset=1)
    )
    index = [i for batch in got for i in batch.column("sample_index").to_pylist()]
    assert index == [2, 4, 6]
