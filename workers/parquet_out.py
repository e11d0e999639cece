"""Parquet shard files written group by group, with settings fixed so the same rows give the same bytes.

Every token-level output (packed, tokenized) writes its rows through `ShardedParquet`: the caller
cuts its rows into shards of `rows_per_shard` and each shard into row groups (`group_ranges`),
builds one Arrow table per group and hands it over; the writer streams it into the shard's file
under a work folder and forgets it. Nothing but one group is ever held, whatever the dataset size.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3
GROUP_TOKENS = 1 << 20  # tokens per row group, about: a writer holds ~80 bytes per token of one group
OPTIONS: dict[str, Any] = {
    "compression": COMPRESSION,
    "compression_level": COMPRESSION_LEVEL,
    "use_dictionary": False,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "store_schema": True,
    "write_page_index": False,
    "write_page_checksum": False,
}

Sink = Path | str | Callable[[str, bytes], None]


def arrow_array(values: npt.NDArray[Any], type: Any) -> Any:
    """A numpy array as an Arrow array of `type`, over the same memory. (`pa.array` would import
    pandas on its first call, seconds in a fresh worker, to check for pandas input.)"""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(type, len(values), [None, pa.py_buffer(values)])


def list_array(offsets: npt.NDArray[Any], values: npt.NDArray[Any], type: Any) -> Any:
    """Arrow `list<type>`: row r is `values[offsets[r]:offsets[r + 1]]`."""
    starts = arrow_array(offsets.astype(np.int32, copy=False), pa.int32())
    return pa.ListArray.from_arrays(starts, arrow_array(values, type))


def hex_strings(digests: bytes, width: int = 32) -> Any:
    """Arrow strings: the hex of each `width`-byte digest."""
    n = len(digests) // width
    offsets = np.arange(n + 1, dtype=np.int32) * (2 * width)
    text = pa.py_buffer(digests.hex().encode())
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), text])


class ShardFile(NamedTuple):
    name: str
    path: Path
    rows: int
    size: int
    sha256: str


def group_ranges(rows: int, rows_per_shard: int, group_rows: int) -> Iterator[tuple[int, int, int]]:
    """(shard index, first row, end row) of every row group, in order; groups never straddle shards."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    for shard, start in enumerate(range(0, rows, rows_per_shard)):
        end = min(rows, start + rows_per_shard)
        for a in range(start, end, group_rows):
            yield shard, a, min(end, a + group_rows)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ShardedParquet:
    """Shard files `name_of(i)` in `folder`; `write(i, table)` appends one row group to shard i
    (shards are written in order: a new index closes the previous shard)."""

    def __init__(self, folder: Path, schema: Any, name_of: Callable[[int], str]) -> None:
        self.folder = folder
        self.schema = schema
        self.name_of = name_of
        self.shards: list[ShardFile] = []
        self._writer: Any = None
        self._index = -1
        self._rows = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, table: Any) -> None:
        if index != self._index:
            if index < self._index:
                raise ValueError(f"shard {index} after shard {self._index}")
            self._finish()
            self._index = index
            self._writer = pq.ParquetWriter(self.folder / self.name_of(index), self.schema, **OPTIONS)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._rows += table.num_rows

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        name = self.name_of(self._index)
        path = self.folder / name
        self.shards.append(ShardFile(name, path, self._rows, path.stat().st_size, _sha256(path)))
        self._rows = 0

    def close(self) -> list[ShardFile]:
        self._finish()
        return self.shards


def deliver(out: Sink, files: list[ShardFile], extra: dict[str, bytes]) -> None:
    """Hand finished shard files (and small extra files, such as the manifest) to a directory or
    to `out(name, bytes)`."""
    if callable(out):
        for f in files:
            out(f.name, f.path.read_bytes())
        for name, data in extra.items():
            out(name, data)
        return
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.path.parent.resolve() != directory.resolve():
            f.path.replace(directory / f.name)
    for name, data in extra.items():
        partial = directory / (name + ".partial")
        partial.write_bytes(data)
        partial.replace(directory / name)


def scratch_for(out: Sink) -> tempfile.TemporaryDirectory[str] | None:
    """A temporary folder for shard files unless they can be written where they belong."""
    if callable(out):
        return tempfile.TemporaryDirectory(prefix="tuneset-parquet-")
    return None
