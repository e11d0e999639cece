"""Packed sequences as Parquet shards plus a manifest, byte for byte the same on every run.

Shards are `packed-00000.parquet`, `packed-00001.parquet`, ... of `rows_per_shard` sequences each,
in the order given, with the columns

    input_ids list<int32>, labels list<int32>, position_ids list<int32>,
    cu_seqlens list<int32>, doc_ids list<int64>, length int32

written with fixed settings (zstd level 3, one row group per shard, no dictionary, statistics
on, Parquet format 2.6) and no key-value metadata beyond the Arrow schema, which holds nothing
that varies: the same sequences give the same bytes, whatever the machine or the time. The
manifest (`manifest.json`, sorted keys) lists every shard with its rows, size and SHA-256,
the totals and the packing efficiency.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from service.core.packing import PackedSequence, PackStats

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
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3
MANIFEST = "manifest.json"

Sink = Path | str | Callable[[str, bytes], None]


def shard_name(index: int) -> str:
    return f"packed-{index:05d}.parquet"


def table_of(sequences: Sequence[PackedSequence]) -> Any:
    return pa.Table.from_pydict(
        {
            "input_ids": [s.input_ids for s in sequences],
            "labels": [s.labels for s in sequences],
            "position_ids": [s.position_ids for s in sequences],
            "cu_seqlens": [s.cu_seqlens for s in sequences],
            "doc_ids": [s.doc_ids for s in sequences],
            "length": [s.length for s in sequences],
        },
        schema=SCHEMA,
    )


def shard_bytes(sequences: Sequence[PackedSequence]) -> bytes:
    """One shard: deterministic bytes for the given sequences."""
    table = table_of(sequences)
    buffer = pa.BufferOutputStream()
    pq.write_table(
        table,
        buffer,
        row_group_size=max(1, len(sequences)),
        compression=COMPRESSION,
        compression_level=COMPRESSION_LEVEL,
        use_dictionary=False,
        write_statistics=True,
        version="2.6",
        data_page_version="1.0",
        store_schema=True,
        write_page_index=False,
        write_page_checksum=False,
    )
    return bytes(buffer.getvalue().to_pybytes())


def _writer(out: Sink) -> Callable[[str, bytes], None]:
    if callable(out):
        return out
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> None:
        target = directory / name
        partial = directory / (name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)

    return write


def write_shards(
    sequences: Sequence[PackedSequence],
    out: Sink,
    rows_per_shard: int = 10_000,
    *,
    seq_len: int | None = None,
    template: str | None = None,
    encoding: str | None = None,
    stats: PackStats | None = None,
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
    write = _writer(out)
    shards: list[dict[str, Any]] = []
    for index, start in enumerate(range(0, len(sequences), rows_per_shard)):
        chunk = sequences[start : start + rows_per_shard]
        data = shard_bytes(chunk)
        name = shard_name(index)
        write(name, data)
        shards.append(
            {"name": name, "rows": len(chunk), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        )
    real = sum(s.length for s in sequences)
    slots = len(sequences) * seq_len
    totals: dict[str, Any] = {
        "sequences": len(sequences),
        "documents": sum(len(s.doc_ids) for s in sequences),
        "real_tokens": real,
        "trained_tokens": sum(1 for s in sequences for label in s.labels if label != -100),
        "slots": slots,
        "padding_tokens": slots - real,
        "lower_bound": -(-real // seq_len) if seq_len else 0,
    }
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
        "format": "tuneset.packed/1",
        "seq_len": seq_len,
        "template": template,
        "encoding": encoding,
        "columns": {field.name: str(field.type) for field in SCHEMA},
        "compression": {"codec": COMPRESSION, "level": COMPRESSION_LEVEL},
        "shards": shards,
        "totals": totals,
        "efficiency": real / slots if slots else 1.0,
    }
    write(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest
