"""Packed sequences as Parquet shards plus a manifest, byte for byte the same on every run.

Shards are `packed-00000.parquet`, `packed-00001.parquet`, ... of `rows_per_shard` sequences each,
in the order given, with the columns

    input_ids list<int32>, labels list<int32>, position_ids list<int32>,
    cu_seqlens list<int32>, doc_ids list<int64>, length int32

written with fixed settings (zstd level 3, no dictionary, statistics on, Parquet format 2.6, row
groups of `group_rows(seq_len)` sequences: about 1M tokens, so a writer never holds more than
one group) and no key-value metadata beyond the Arrow schema, which holds nothing that varies:
the same sequences give the same bytes, whatever the machine, the time, or whether they came
from memory (`write_shards`) or were streamed group by group from a build's spill files
(`PackedWriter`). The manifest (`manifest.json`, sorted keys) lists every shard with its rows,
size and SHA-256, the totals, the packing efficiency and the SHA-256 of the tokenizer and
template the tokens came from, so a trainer can refuse a mismatch.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypedDict, Unpack

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]

from service.core.packing import PackedSequence, PackStats, Plan
from workers.parquet_out import (
    COMPRESSION,
    COMPRESSION_LEVEL,
    GROUP_TOKENS,
    ShardedParquet,
    ShardFile,
    Sink,
    arrow_array,
    deliver,
    group_ranges,
    list_array,
    scratch_for,
)

SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("cu_seqlens", pa.list_(pa.int32()), nullable=False),
        pa.field("doc_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
    ]
)
MANIFEST = "manifest.json"


class Provenance(TypedDict, total=False):
    """Where the tokens came from, as the manifest names it (a key left out is null)."""

    template: str | None
    profile: str | None
    encoding: str | None
    tokenizer_sha256: str | None
    template_sha256: str | None


FORMAT = "tuneset.packed/1"
IGNORE = -100


def shard_name(index: int) -> str:
    return f"packed-{index:05d}.parquet"


def group_rows(seq_len: int) -> int:
    """Sequences per row group: about GROUP_TOKENS tokens, at least one sequence."""
    return max(1, GROUP_TOKENS // max(1, seq_len))


class PackedGroup(NamedTuple):
    """Consecutive packed sequences as flat arrays: row r's tokens are `[row_offsets[r], row_offsets[r + 1])`
    of input_ids / labels / position_ids, its cu_seqlens `[cu_offsets[r], cu_offsets[r + 1])` of cu_seqlens,
    its documents `[doc_offsets[r], doc_offsets[r + 1])` of doc_ids."""

    input_ids: npt.NDArray[np.int32]
    labels: npt.NDArray[np.int32]
    position_ids: npt.NDArray[np.int32]
    row_offsets: npt.NDArray[np.int32]
    cu_seqlens: npt.NDArray[np.int32]
    cu_offsets: npt.NDArray[np.int32]
    doc_ids: npt.NDArray[np.int64]
    doc_offsets: npt.NDArray[np.int32]
    length: npt.NDArray[np.int32]


def group_of_sequences(sequences: Sequence[PackedSequence]) -> PackedGroup:
    def flat(column: Iterable[list[int]], dtype: Any) -> Any:
        return np.fromiter(chain.from_iterable(column), dtype=dtype)

    def offsets(sizes: Iterable[int]) -> npt.NDArray[np.int32]:
        return np.concatenate([[0], np.cumsum(np.fromiter(sizes, dtype=np.int64))]).astype(np.int32)

    return PackedGroup(
        input_ids=flat((s.input_ids for s in sequences), np.int32),
        labels=flat((s.labels for s in sequences), np.int32),
        position_ids=flat((s.position_ids for s in sequences), np.int32),
        row_offsets=offsets(len(s.input_ids) for s in sequences),
        cu_seqlens=flat((s.cu_seqlens for s in sequences), np.int32),
        cu_offsets=offsets(len(s.cu_seqlens) for s in sequences),
        doc_ids=flat((s.doc_ids for s in sequences), np.int64),
        doc_offsets=offsets(len(s.doc_ids) for s in sequences),
        length=np.fromiter((s.length for s in sequences), dtype=np.int32),
    )


def table_of(group: PackedGroup) -> Any:
    return pa.Table.from_arrays(
        [
            list_array(group.row_offsets, group.input_ids, pa.int32()),
            list_array(group.row_offsets, group.labels, pa.int32()),
            list_array(group.row_offsets, group.position_ids, pa.int32()),
            list_array(group.cu_offsets, group.cu_seqlens, pa.int32()),
            list_array(group.doc_offsets, group.doc_ids, pa.int64()),
            arrow_array(group.length, pa.int32()),
        ],
        schema=SCHEMA,
    )


class PackedWriter:
    """Packed sequences, group by group in order, into shard files; then the manifest.

    `add(group)` takes the next rows (cut by the caller with `parquet_out.group_ranges`, so both
    paths cut the same way); totals are counted as the rows pass."""

    def __init__(self, folder: Path, seq_len: int, rows_per_shard: int) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.seq_len = seq_len
        self.rows_per_shard = rows_per_shard
        self.files = ShardedParquet(folder, SCHEMA, shard_name)
        self.sequences = self.documents = self.real_tokens = self.trained_tokens = 0
        self.fill: list[float] = []  # per sequence, for the report page

    def add(self, shard: int, group: PackedGroup) -> None:
        if len(group.length) and int(group.length.max()) > self.seq_len:
            raise ValueError(f"a sequence of {int(group.length.max())} tokens exceeds seq_len {self.seq_len}")
        self.files.write(shard, table_of(group))
        self.sequences += len(group.length)
        self.documents += len(group.doc_ids)
        self.real_tokens += int(group.length.sum(dtype=np.int64))
        self.trained_tokens += int(np.count_nonzero(group.labels != IGNORE))
        self.fill += (group.length / self.seq_len).tolist() if self.seq_len else []

    def close(
        self, *, stats: PackStats | None = None, unrenderable: int | None = None, **source: Unpack[Provenance]
    ) -> tuple[list[ShardFile], dict[str, Any]]:
        shards = self.files.close()
        seq_len = self.seq_len
        slots = self.sequences * seq_len
        real = self.real_tokens
        totals: dict[str, Any] = {
            "sequences": self.sequences,
            "documents": self.documents,
            "real_tokens": real,
            "trained_tokens": self.trained_tokens,
            "slots": slots,
            "padding_tokens": slots - real,
            "lower_bound": -(-real // seq_len) if seq_len else 0,
        }
        if unrenderable is not None:
            totals["unrenderable"] = unrenderable
        if stats is not None:
            totals["packing"] = {
                "policy": stats.policy,
                "documents_in": stats.documents_in,
                "kept": stats.kept,
                "dropped": stats.dropped,
                "truncated": stats.truncated,
                "split": stats.split,
                "empty": stats.empty,
                "pieces": stats.pieces,
                "split_turns_truncated": stats.split_turns_truncated,
                "tokens_in": stats.tokens_in,
                "tokens_cut": stats.tokens_cut,
            }
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "seq_len": seq_len,
            **{key: source.get(key) for key in Provenance.__annotations__},
            "columns": {field.name: str(field.type) for field in SCHEMA},
            "compression": {"codec": COMPRESSION, "level": COMPRESSION_LEVEL},
            "shards": [{"name": f.name, "rows": f.rows, "sha256": f.sha256, "size": f.size} for f in shards],
            "totals": totals,
            "efficiency": real / slots if slots else 1.0,
        }
        return shards, manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _write_all(sequences: Sequence[PackedSequence], writer: PackedWriter) -> None:
    for shard, a, b in group_ranges(len(sequences), writer.rows_per_shard, group_rows(writer.seq_len)):
        writer.add(shard, group_of_sequences(sequences[a:b]))


def shard_bytes(sequences: Sequence[PackedSequence]) -> bytes:
    """One shard: deterministic bytes for the given sequences (their own seq_len)."""
    seq_len = sequences[0].seq_len if sequences else 1
    with tempfile.TemporaryDirectory(prefix="tuneset-packed-") as tmp:
        writer = PackedWriter(Path(tmp), seq_len, max(1, len(sequences)))
        _write_all(sequences, writer)
        shards, _ = writer.close()
        return shards[0].path.read_bytes() if shards else b""


def write_shards(
    sequences: Sequence[PackedSequence],
    out: Sink,
    rows_per_shard: int = 10_000,
    *,
    seq_len: int | None = None,
    stats: PackStats | None = None,
    **source: Unpack[Provenance],
) -> dict[str, Any]:
    """Write the shards and `manifest.json` to a directory or through `out(name, bytes)`; return the manifest.

    `seq_len` defaults to the sequences' own (or `stats.seq_len`); with no sequences at all no shard
    is written and the manifest says so.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    if seq_len is None:
        seq_len = sequences[0].seq_len if sequences else (stats.seq_len if stats is not None else 0)
    if any(s.seq_len != seq_len for s in sequences):
        raise ValueError(f"every sequence must have seq_len {seq_len}")
    scratch = scratch_for(out)
    try:
        folder = Path(scratch.name) if scratch is not None else Path(out)  # type: ignore[arg-type]
        writer = PackedWriter(folder, seq_len, rows_per_shard)
        _write_all(sequences, writer)
        shards, manifest = writer.close(stats=stats, **source)
        deliver(out, shards, {MANIFEST: manifest_bytes(manifest)})
    finally:
        if scratch is not None:
            scratch.cleanup()
    return manifest


class PieceRefs(NamedTuple):
    """Where each planned piece's tokens are: its spill shard, its first token in that shard's
    token stream, and the id of the document it belongs to."""

    shard: npt.NDArray[np.int32]
    start: npt.NDArray[np.int64]
    doc: npt.NDArray[np.int64]


class TokenReader(Protocol):
    def read_into(
        self, shard: int, start: int, ids: npt.NDArray[np.int32], mask: npt.NDArray[np.uint8]
    ) -> None: ...


def stream_groups(
    plan: Plan, refs: PieceRefs, reader: TokenReader, rows_per_shard: int, seq_len: int
) -> Iterator[tuple[int, PackedGroup]]:
    """The plan's sequences as row groups (with their shard index), each filled from the spill
    files: the same rows, cut the same way, as `group_of_sequences` over `pack`'s output."""
    members, starts, lengths = plan.members, plan.starts, plan.lengths
    for shard, a, b in group_ranges(len(starts) - 1, rows_per_shard, group_rows(seq_len)):
        m = members[starts[a] : starts[b]]
        sizes = lengths[m].astype(np.int64)
        local = (starts[a : b + 1] - starts[a]).astype(np.int64)  # each row's first piece in m
        rows = b - a
        total = int(sizes.sum())
        ids = np.empty(total, dtype=np.int32)
        mask = np.empty(total, dtype=np.uint8)
        pos = 0
        for p, n in zip(m.tolist(), sizes.tolist(), strict=True):
            reader.read_into(int(refs.shard[p]), int(refs.start[p]), ids[pos : pos + n], mask[pos : pos + n])
            pos += n
        ends = np.cumsum(sizes)
        row_offsets = np.zeros(rows + 1, dtype=np.int64)
        row_offsets[1:] = ends[local[1:] - 1]
        counts = np.diff(local)
        cu = np.zeros(len(m) + rows, dtype=np.int32)
        cu_offsets = local + np.arange(rows + 1)
        ends_in_row = ends - np.repeat(row_offsets[:-1], counts)
        filled = np.ones(len(cu), dtype=bool)
        filled[cu_offsets[:-1]] = False  # each row's leading 0
        cu[filled] = ends_in_row
        labels = ids.copy()
        labels[mask == 0] = IGNORE
        del mask
        positions = np.arange(total, dtype=np.int32)  # int32 throughout: a group's temporaries stay small
        positions -= np.repeat((ends - sizes).astype(np.int32), sizes)
        yield (
            shard,
            PackedGroup(
                input_ids=ids,
                labels=labels,
                position_ids=positions,
                row_offsets=row_offsets.astype(np.int32),
                cu_seqlens=cu,
                cu_offsets=cu_offsets.astype(np.int32),
                doc_ids=refs.doc[m],
                doc_offsets=local.astype(np.int32),
                length=np.diff(row_offsets).astype(np.int32),
            ),
        )
