"""Rows of a layer's embedding column read straight from its Lance files, by row id.

Lance's take costs about 7 µs a row for scattered rows (1,000 rows of a 50,000 x 512
layer: 7-9 ms on the 2-core machine, under 0.7 ms for 1,000 contiguous rows), which
is what a query for named samples pays. When a column is stored plainly, which is
how Lance 2.0 and 2.1 files store a ``fixed_size_list<float>`` without nulls (flat
pages, no compression), a row's vector sits at a known offset of its data file, and
1,000 ``pread`` calls fetch the same rows in about 2 ms (reading through a memory map
took 0.9 ms, but put every page it touched, 64 KiB around each row, into the
process's resident memory).

:func:`take_vectors` does that for the tables and files whose layout it can check
(local disk, row ids that are row addresses, every page of the column in that flat
encoding) and asks Lance otherwise, so it answers for any table. The layout of a
(table, version) is read once from the files' metadata and remembered.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import lance
import numpy as np
import pyarrow as pa
from lance.file import LanceFileReader

from storage import schema as S
from storage.tables import version_key
from storage.version_cache import VersionCache, one_entry

LAYOUT_ENTRIES = 64  # (table, version) layouts remembered
_LAYOUTS: VersionCache[_Layout | None] = VersionCache(LAYOUT_ENTRIES, size=one_entry)

# The page encodings read directly, as the page metadata prints them with white space
# removed: a fixed-size list without nulls over flat, uncompressed values, in Lance
# 2.0's plain encoding and in Lance 2.1's full-zip layout without repetition or
# definition levels (one row's values after another). Anything else is left to Lance.
_FLAT_PAGES = (
    re.compile(
        r"ArrayEncoding{array_encoding:Some\(Nullable\(Nullable{nullability:Some\(NoNulls\("
        r"NoNull{values:Some\(ArrayEncoding{array_encoding:Some\(FixedSizeList\(FixedSizeList{"
        r"dimension:(?P<dim>\d+),has_validity:false,items:Some\(ArrayEncoding{array_encoding:"
        r"Some\(Nullable\(Nullable{nullability:Some\(NoNulls\(NoNull{values:Some\(ArrayEncoding{"
        r"array_encoding:Some\(Flat\(Flat{bits_per_value:(?P<bits>\d+),buffer:Some\(Buffer{"
        r"buffer_index:0,buffer_type:Page,},\),compression:None,},\),\),},\),},\),\),},\),\),},"
        r"\),},\),\),},\),},\),\),},\),\),}"
    ),
    re.compile(
        r"PageLayout{layout:Some\(FullZipLayout\(FullZipLayout{bits_rep:0,bits_def:0,"
        r"num_items:(?P<rows>\d+),num_visible_items:(?P=rows),value_compression:Some\("
        r"CompressiveEncoding{compression:Some\(FixedSizeList\(FixedSizeList{items_per_value:"
        r"(?P<dim>\d+),has_validity:false,values:Some\(CompressiveEncoding{compression:Some\("
        r"Flat\(Flat{bits_per_value:(?P<bits>\d+),data:None,},\),\),},\),},\),\),},\),"
        r"layers:\[RepdefAllValidItem,\],details:Some\(BitsPerValue\(\d+,\),\),},\),\),}"
    ),
)


@dataclass
class _Fragment:
    """One data file's pages of the column: the first row of each page, where its values
    start in the file, and the file (opened for each take: a layout kept open across
    versions would hold many files, deleted ones too)."""

    page_rows: np.ndarray  # (pages + 1,) first row of each page, then the row count
    page_offsets: np.ndarray  # (pages,)
    path: str


@dataclass
class _Layout:
    dtype: np.dtype
    dim: int
    fragments: dict[int, _Fragment]


def take_vectors(ds: lance.LanceDataset, row_ids: np.ndarray, column: str = S.EMBEDDING):
    """The vectors (n, d) of the rows with ``row_ids`` (row addresses, as
    :meth:`storage.EmbeddingStore.row_ids` returns them), in the order given.

    Read from the data files by ``pread`` where their layout allows it, else through
    Lance's take; float16 columns come back as float16 (the stored dtype).
    """
    row_ids = np.asarray(row_ids, dtype=np.uint64)
    layout = _layout(ds, column)
    if layout is None or not len(row_ids):
        return _lance_take(ds, row_ids, column)
    out = np.empty((len(row_ids), layout.dim), dtype=layout.dtype)
    row_bytes = layout.dim * layout.dtype.itemsize
    flat = memoryview(out).cast("B")
    fragment_ids = (row_ids >> np.uint64(32)).astype(np.int64)
    offsets = (row_ids & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for fragment_id in np.unique(fragment_ids):
        fragment = layout.fragments.get(int(fragment_id))
        at = np.flatnonzero(fragment_ids == fragment_id)
        rows = offsets[at]
        if fragment is None or rows.max() >= fragment.page_rows[-1]:
            raise ValueError(
                f"row ids {row_ids[at][:3].tolist()} are not rows of this version of the table"
            )
        page = np.searchsorted(fragment.page_rows, rows, side="right") - 1
        starts = fragment.page_offsets[page] + (rows - fragment.page_rows[page]) * row_bytes
        fd = os.open(fragment.path, os.O_RDONLY)
        try:
            for position, start in zip(at.tolist(), starts.tolist(), strict=True):
                row = flat[position * row_bytes : (position + 1) * row_bytes]
                if os.preadv(fd, [row], start) != row_bytes:
                    raise OSError(f"short read of a vector in {fragment.path}")
        finally:
            os.close(fd)
    return out


def _lance_take(ds: lance.LanceDataset, row_ids: np.ndarray, column: str) -> np.ndarray:
    rows = ds._take_rows(pa.array(row_ids, type=pa.uint64()), [column]).column(0)
    vector = ds.schema.field(column).type
    values = rows.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(row_ids), vector.list_size)


def _layout(ds: lance.LanceDataset, column: str) -> _Layout | None:
    return _LAYOUTS.get((*version_key(ds), column), lambda: _read_layout(ds, column))


def _read_layout(ds: lance.LanceDataset, column: str) -> _Layout | None:
    """The column's pages in every fragment, or None if any of them is not flat and local."""
    if "://" in ds.uri and not ds.uri.startswith("file://"):
        return None  # an object store: no local file to read
    vector = ds.schema.field(column).type
    if not pa.types.is_fixed_size_list(vector) or vector.value_type not in (
        pa.float32(),
        pa.float16(),
    ):
        return None
    dtype = np.dtype(vector.value_type.to_pandas_dtype())
    field_id = ds.lance_schema.field(column).id()
    root = ds.uri.removeprefix("file://")
    fragments = {}
    try:
        for fragment in ds.get_fragments():
            meta = fragment.metadata
            if meta.row_id_meta is not None:
                return None  # stable row ids are not row addresses
            files = [f for f in fragment.data_files() if field_id in f.fields]
            if len(files) != 1 or files[0].base_id is not None:
                return None
            data = files[0]
            column_index = data.column_indices[data.fields.index(field_id)]
            path = os.path.join(root, "data", data.path)
            pages = LanceFileReader(path).metadata().columns[column_index].pages
            page_rows, page_offsets = [0], []
            for page in pages:
                encoding = re.sub(r"\s", "", str(page.encoding))
                match = next(filter(None, (p.fullmatch(encoding) for p in _FLAT_PAGES)), None)
                if (
                    match is None
                    or int(match["dim"]) != vector.list_size
                    or int(match["bits"]) != 8 * dtype.itemsize
                    or len(page.buffers) != 1
                ):
                    return None
                buffer = page.buffers[0]
                row_bytes = vector.list_size * dtype.itemsize
                if buffer.size % row_bytes:
                    return None
                page_rows.append(page_rows[-1] + buffer.size // row_bytes)
                page_offsets.append(buffer.position)
            if page_rows[-1] != meta.physical_rows:
                return None
            fragments[fragment.fragment_id] = _Fragment(
                np.array(page_rows, dtype=np.int64),
                np.array(page_offsets, dtype=np.int64),
                path,
            )
    except (OSError, ValueError, IndexError, AttributeError):
        return None  # a layout this reader does not know: Lance reads it
    return _Layout(dtype, vector.list_size, fragments)
