"""The Lance-backed store: one root URI, one Lance dataset per table.

Writes follow Lance's distributed-write protocol. A worker calls
:meth:`EmbeddingStore.write_fragments`, which writes data files and returns a
:class:`PendingUnit` (cheap fragment metadata, safe to send through Ray); the
single committer calls :meth:`EmbeddingStore.commit`, which makes the whole unit
visible in one transaction. A unit whose key is already committed is dropped,
so re-running a worker never duplicates rows, and a worker killed before the
commit leaves nothing visible (its orphan files are removed by ``compact``).

This module holds the writes, the commits and their maintenance (compaction and
key indices); :class:`EmbeddingStore` adds the readers of :mod:`storage.reads`,
the version tags of :mod:`storage.versions` and the table access of
:mod:`storage.tables`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import lance
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from lance.commit import CommitConflictError
from lance.fragment import FragmentMetadata, write_fragments

from storage import schema as S
from storage.filters import where
from storage.reads import (  # noqa: F401 - re-exported: storage.store kept its names
    LOCAL_SCAN_IO_BUFFER_BYTES,
    SCAN_BATCH_BYTES,
    StoreReads,
    _copy_vectors,
    embedding_matrix,
)
from storage.tables import StoreError, _s3_options  # noqa: F401 - re-exported
from storage.versions import TAG_NAME, StoreVersions, _check_tag_name  # noqa: F401

ROWS_PER_GROUP = 1024
# A unit given as a table this large is written as WRITE_THREADS fragments at once:
# 50,000 x 2,048 float32 wrote 1.35x faster in 4 slices than in one on 2 cores.
PARALLEL_WRITE_MIN_BYTES = 64 << 20
WRITE_THREADS = 4
# Bytes per batch handed to Lance when a unit is given as a table: checking and encoding
# 16 MiB at a time wrote the same 400 MB unit ~10% faster than whole 100 MB slices
# (best of 9, alternating: 0.161 s vs 0.179 s; 8 MiB: 0.166 s).
WRITE_BATCH_BYTES = 16 << 20
# Lance file format of new tables: 2.0 wrote 2.6x and read 1.3x faster than 2.2 for
# 50,000 x 2,048 float32 vectors on the development machine.
STORAGE_FORMAT = "2.0"
# Key columns that queries filter on, and the scalar index each gets (see ``optimize``).
KEY_INDICES = {
    S.UNIT_KEY: "BTREE",
    "sample_index": "BTREE",
    "experiment_id": "BITMAP",
    "run_id": "BITMAP",
    "dataset_id": "BITMAP",
    "seed": "BITMAP",
    "epoch": "BITMAP",
    "split": "BITMAP",
    "superclass": "BITMAP",
    "layer": "BITMAP",
    "method": "BITMAP",
    "metric": "BITMAP",
}


@dataclass(frozen=True)
class CommitRetryPolicy:
    """How a commit that loses a race to another writer's commit is retried.

    Lance reports such a race as ``CommitConflictError``; the commit is tried up to
    ``attempts`` times in all, ``backoff_s * 2**i`` seconds after the i-th conflict
    (0.2 + 0.4 + 0.8 + 1.6 s by default), re-reading the table each time. Appends
    never conflict with each other; an overwrite or a restore of the table does.
    """

    attempts: int = 5
    backoff_s: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0:
            raise StoreError(
                f"{self!r} is not a retry policy; use attempts >= 1 and backoff_s >= 0"
            )

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after the ``failed_attempt``-th conflict (0-based)."""
        return self.backoff_s * 2**failed_attempt


@dataclass(frozen=True)
class PendingUnit:
    """Data files of one unit of work, written but not yet visible."""

    table: str
    unit_key: str
    schema: pa.Schema
    fragments: list[FragmentMetadata] = field(repr=False)
    n_rows: int


class EmbeddingStore(StoreReads, StoreVersions):
    """A stratalens store rooted at a local path or an object-store URI.

    Parameters
    ----------
    root : str
        ``./stratalens-store``, ``/abs/path`` or ``s3://bucket/prefix``.
    storage_options : dict, optional
        Passed to Lance for object stores (endpoint, region, credentials).
    commit_retry : CommitRetryPolicy, optional
        How commits that lose a race with another writer are retried.
    session : lance.Session, optional
        Shared by every dataset the store opens, so that opened vector indices and
        file metadata stay cached from one read to the next (a long-lived reader such
        as the query service passes one). Not sent along when the store is pickled.
    """

    def __init__(
        self,
        root: str,
        *,
        storage_options: dict[str, str] | None = None,
        commit_retry: CommitRetryPolicy = CommitRetryPolicy(),
        session: lance.Session | None = None,
    ):
        self.root = str(root).rstrip("/")
        self.storage_options = storage_options or None
        self.commit_retry = commit_retry
        self.session = session

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.root!r})"

    def __getstate__(self) -> dict:
        return self.__dict__ | {"session": None}  # a Lance session does not pickle

    # -- writes ---------------------------------------------------------------
    def write_fragments(
        self,
        table: str,
        unit_key: str,
        data: pa.Table | Iterable[pa.RecordBatch],
        schema: pa.Schema | None = None,
    ) -> PendingUnit:
        """Write one unit's rows as Lance fragments without committing them.

        ``data`` holds every column of the table but ``unit_key``, which is
        filled in here. Batches are validated and written one at a time, so a
        stream larger than memory is fine. A table is handed over in batches of
        ``WRITE_BATCH_BYTES``; one of at least ``PARALLEL_WRITE_MIN_BYTES`` is cut
        into ``WRITE_THREADS`` slices written as fragments side by side (Lance
        releases the GIL), in row order.
        """
        existing = self.dataset(table)
        schema = _expected_schema(table, schema, existing)
        version = existing.data_storage_version if existing else STORAGE_FORMAT

        def write(batches: Iterable[pa.RecordBatch]) -> tuple[list[FragmentMetadata], int]:
            return self._write_stream(table, unit_key, batches, schema, version)

        streams = _write_streams(data) if isinstance(data, pa.Table) else [data]
        if len(streams) == 1:
            written = [write(streams[0])]
        else:
            with ThreadPoolExecutor(len(streams), thread_name_prefix="lance-write") as pool:
                written = list(pool.map(write, streams))
        fragments = [f for part, _ in written for f in part]
        return PendingUnit(table, unit_key, schema, fragments, sum(rows for _, rows in written))

    def _write_stream(
        self,
        table: str,
        unit_key: str,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        storage_version: str,
    ) -> tuple[list[FragmentMetadata], int]:
        """Validate and write one stream of batches as fragments; (fragments, rows)."""
        counted = _Counter()
        reader = pa.RecordBatchReader.from_batches(
            schema, counted.wrap(_prepare(table, unit_key, b, schema) for b in batches)
        )
        try:
            fragments = write_fragments(
                reader,
                self.uri(table),
                schema=schema,
                data_storage_version=storage_version,
                # "append" also works before the table exists; "create" would fail
                # if the committer created the table while this worker was writing.
                mode="append",
                max_rows_per_group=ROWS_PER_GROUP,
                storage_options=self.storage_options,
            )
        except OSError:
            # Lance wraps errors raised inside the batch stream; surface ours as is.
            if counted.error is not None:
                raise counted.error from None
            raise
        return list(fragments), counted.rows

    def commit(self, unit: PendingUnit) -> bool:
        """Make ``unit`` visible in one transaction; ``False`` if its key was already there.

        Units are only ever appended (a new table is first created empty), so two
        committers racing on one table never replace each other's rows; a commit that
        loses a race is retried as ``commit_retry`` says.
        """
        if unit.n_rows == 0:
            raise StoreError(
                f"unit {unit.unit_key!r} of table {unit.table!r} has no rows to commit"
            )
        policy = self.commit_retry
        for attempt in range(policy.attempts):
            try:
                ds = self.dataset(unit.table) or self._create_table(unit.table, unit.schema)
                if _has_key(ds, unit.unit_key):
                    return False
                lance.LanceDataset.commit(
                    self.uri(unit.table),
                    lance.LanceOperation.Append(unit.fragments),
                    read_version=ds.version,
                    storage_options=self.storage_options,
                    commit_message=unit.unit_key,
                )
                return True
            except CommitConflictError:
                if attempt == policy.attempts - 1:
                    raise
                time.sleep(policy.delay(attempt))
        return False  # pragma: no cover - the loop returns or raises

    def _create_table(self, table: str, schema: pa.Schema) -> lance.LanceDataset:
        """Create ``table`` empty, unless another writer created it first.

        Lance has no create-if-absent: a creation whose check ran before another
        writer's lands after that writer's commits, as an overwrite that hides them.
        A creator that lands on any version but the first therefore appends the
        fragments of the version before its own at once, so every unit committed
        meanwhile is visible again, once.
        """
        try:
            created = lance.write_dataset(
                schema.empty_table(),
                self.uri(table),
                mode="create",
                data_storage_version=STORAGE_FORMAT,
                storage_options=self.storage_options,
            )
        except OSError as exc:
            if not self.exists(table):
                raise
            ds = self.dataset(table)  # another writer created it
            if ds is None:  # ... and has not written its first version yet
                raise CommitConflictError(f"table {table!r} is being created") from exc
            return ds
        if created.version > 1:
            hidden = created.checkout_version(created.version - 1).get_fragments()
            if hidden:
                lance.LanceDataset.commit(
                    self.uri(table),
                    lance.LanceOperation.Append([f.metadata for f in hidden]),
                    read_version=created.version,
                    storage_options=self.storage_options,
                    commit_message=f"restore the units a concurrent creation of {table} hid",
                )
        return self.dataset(table)

    def write_unit(
        self,
        table: str,
        unit_key: str,
        data: pa.Table | Iterable[pa.RecordBatch],
        schema: pa.Schema | None = None,
    ) -> bool:
        """Write and commit one unit at once (for small units written by the committer)."""
        ds = self.dataset(table)
        if ds is not None and _has_key(ds, unit_key):
            return False
        return self.commit(self.write_fragments(table, unit_key, data, schema))

    def optimize(self, table: str) -> None:
        """Merge small fragments and (re)build the scalar indices of the key columns.

        Safe while readers are open (they keep their version); run it when no
        stage of a run is committing to ``table``.
        """
        ds = self.dataset(table)
        if ds is None or ds.count_rows() == 0:
            return
        ds.optimize.compact_files()
        ds = self.dataset(table)
        for column, index_type in KEY_INDICES.items():
            if column in ds.schema.names and not pa.types.is_nested(ds.schema.field(column).type):
                ds.create_scalar_index(column, index_type, replace=True)

    def compact(self, *, keep_versions: int = 1) -> dict[str, int]:
        """``optimize`` every table, then delete all but the newest ``keep_versions``
        versions (tagged versions are kept) and unreferenced files, such as those a
        killed worker wrote but never committed. Run it when no run is writing.

        Returns the bytes removed per table.
        """
        return {
            table: self.compact_table(table, keep_versions=keep_versions)
            for table in self.list_tables()
        }

    def compact_table(self, table: str, *, keep_versions: int = 1) -> int:
        """``compact`` for one table; the bytes removed."""
        self.optimize(table)
        stats = self.dataset(table).cleanup_old_versions(
            retain_versions=keep_versions,
            delete_unverified=True,
            error_if_tagged_old_versions=False,
        )
        return int(stats.bytes_removed)

    def committed_keys(self, table: str) -> set[str]:
        """Unit keys already visible in ``table``."""
        ds = self.dataset(table)
        if ds is None:
            return set()
        column = ds.to_table(columns=[S.UNIT_KEY]).column(0)
        return set(column.unique().to_pylist())

    def delete_experiment(self, experiment_id: str) -> None:
        """Remove every row and embeddings table of one experiment (``--fresh``)."""
        for table in (S.EXPERIMENTS, S.RUNS, S.CLUSTERINGS, S.METRICS, S.PAIRS):
            ds = self.dataset(table)
            if ds is not None:
                ds.delete(where(experiment_id=experiment_id))
        pairs = self.dataset(S.PAIRS)
        if pairs is not None and "experiment_b" in pairs.schema.names:
            pairs.delete(where(experiment_b=experiment_id))  # compares where it is side B
        fs, base = self._filesystem()
        prefix = f"{base}/{S.EMBEDDINGS_PREFIX}/{experiment_id}"
        if fs.get_file_info(prefix).type == pafs.FileType.Directory:
            fs.delete_dir(prefix)

    def delete_units(self, table: str, unit_keys: list[str]) -> None:
        """Remove the rows of the units ``unit_keys`` from ``table`` (if any)."""
        ds = self.dataset(table)
        if ds is not None and unit_keys:
            ds.delete(where(unit_key=list(unit_keys)))


def _expected_schema(
    table: str, schema: pa.Schema | None, ds: lance.LanceDataset | None
) -> pa.Schema:
    """The schema rows for ``table`` must have: the table's own once it exists."""
    if ds is not None:
        if schema is not None and not schema.equals(ds.schema):
            raise StoreError(_schema_mismatch(table, ds.schema, schema))
        return ds.schema
    if schema is not None:
        return schema
    if table in S.FIXED_SCHEMAS:
        return S.FIXED_SCHEMAS[table]
    raise StoreError(f"table {table!r} is new, so write_fragments needs its schema")


def _write_streams(data: pa.Table) -> list[list[pa.RecordBatch]]:
    """The batch streams a unit given as a table is written in, one per write thread."""
    parts = WRITE_THREADS if data.nbytes >= PARALLEL_WRITE_MIN_BYTES else 1
    step = max(1, -(-data.num_rows // parts))
    batch_rows = max(1, WRITE_BATCH_BYTES * data.num_rows // max(1, data.nbytes))
    return [
        data.slice(start, step).to_batches(max_chunksize=batch_rows)
        for start in range(0, max(1, data.num_rows), step)
    ]


def _has_key(ds: lance.LanceDataset, unit_key: str) -> bool:
    """Whether ``unit_key`` is committed (a pushed-down, index-assisted count)."""
    return ds.count_rows(filter=where(**{S.UNIT_KEY: unit_key})) > 0


def _schema_mismatch(table: str, expected: pa.Schema, got: pa.Schema) -> str:
    for f in expected:
        if f.name not in got.names:
            return f"data for table {table!r} lacks column {f.name!r}; add it before writing"
        if not got.field(f.name).type.equals(f.type):
            return (
                f"column {f.name!r} of table {table!r} is {got.field(f.name).type}, but the "
                f"table stores {f.type}; convert the data to match"
            )
    return f"data for table {table!r} has columns {got.names}, expected {expected.names}"


def _prepare(table: str, unit_key: str, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Validate one batch against ``schema`` and add its ``unit_key`` column."""
    columns = []
    for f in schema:
        if f.name == S.UNIT_KEY:
            columns.append(pa.array([unit_key] * batch.num_rows, pa.string()))
            continue
        if f.name not in batch.schema.names:
            raise StoreError(
                f"data for table {table!r} lacks column {f.name!r}; add it before writing"
            )
        column = batch.column(f.name)
        if pa.types.is_fixed_size_list(f.type):
            column = _check_vectors(table, f, column)
        elif not column.type.equals(f.type):
            try:
                column = column.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise StoreError(
                    f"column {f.name!r} of table {table!r} is {column.type}, which does not "
                    f"convert to {f.type}; fix the data type"
                ) from exc
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _check_vectors(table: str, f: pa.Field, column: pa.Array) -> pa.Array:
    if not pa.types.is_fixed_size_list(column.type):
        raise StoreError(
            f"column {f.name!r} of table {table!r} must be a fixed-size list of floats"
        )
    if column.type.list_size != f.type.list_size:
        raise StoreError(
            f"embedding dimension {column.type.list_size} does not match table {table!r}, "
            f"which stores dimension {f.type.list_size}; write it to the right layer's table"
        )
    values = column.flatten().to_numpy(zero_copy_only=False)
    # A sum is finite when every value is (or overflows, which the exact check clears),
    # and needs no n x d mask.
    if not np.isfinite(values.sum()) and not np.isfinite(values).all():
        bad = int((~np.isfinite(values.reshape(len(column), -1))).any(axis=1).sum())
        raise StoreError(
            f"{bad} embedding(s) for table {table!r} contain NaN or Inf; "
            "fix the model or input before writing"
        )
    if not column.type.value_type.equals(f.type.value_type):
        if pa.types.is_float16(f.type.value_type):
            return pa.FixedSizeListArray.from_arrays(
                pa.array(values.astype(np.float16)), f.type.list_size
            )
        column = column.cast(f.type)
    return column


class _Counter:
    """Counts the rows that pass through a batch iterator and keeps its StoreError."""

    def __init__(self) -> None:
        self.rows = 0
        self.error: StoreError | None = None

    def wrap(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            for batch in batches:
                self.rows += batch.num_rows
                yield batch
        except StoreError as exc:
            self.error = exc
            raise
