"""Unpacked tokenized Parquet: one row per training example, ready for `datasets` and TRL.

`tokenized/train-00000.parquet`, ... (and `tokenized/validation-00000.parquet`, ... when the build
splits), at most `rows_per_shard` rows each, in dataset order, with the columns

    input_ids list<int32>, labels list<int32> (-100 where not trained),
    attention_mask list<int8> (all 1: nothing is padded), messages_hash string

`messages_hash` is the SHA-256 (hex) of the example's line in train.jsonl / validation.jsonl (its
canonical JSON, without the newline), so every row can be matched to the conversation it came
from. `tokenized/manifest.json` names the template or profile, the SHA-256 of the tokenizer and
template files (a trainer should refuse a mismatch), and the rows and tokens of each side. The
same Parquet settings as the packed output (see `parquet_out`): byte-identical on every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]

from workers.parquet_out import (
    COMPRESSION,
    COMPRESSION_LEVEL,
    GROUP_TOKENS,
    ShardedParquet,
    ShardFile,
    hex_strings,
    list_array,
)
from workers.token_source import SourceInfo

FORMAT = "tuneset.tokenized/1"
MANIFEST = "manifest.json"
IGNORE = -100
SIDES = ("train", "validation")

SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        pa.field("attention_mask", pa.list_(pa.int8()), nullable=False),
        pa.field("messages_hash", pa.string(), nullable=False),
    ]
)


class TokenizedWriter:
    """One side's rows, in order: a row group closes at GROUP_TOKENS tokens or at a shard's end."""

    def __init__(self, folder: Path, side: str, rows_per_shard: int) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.side = side
        self.rows_per_shard = rows_per_shard
        self.files = ShardedParquet(folder, SCHEMA, lambda i: f"{side}-{i:05d}.parquet")
        self.rows = self.tokens = self.trained_tokens = 0
        self._ids: list[npt.NDArray[np.int32]] = []
        self._masks: list[npt.NDArray[np.uint8]] = []
        self._hashes: list[bytes] = []  # SHA-256 digests
        self._buffered = 0

    def add(self, ids: npt.NDArray[np.int32], mask: npt.NDArray[np.uint8], messages_sha256: bytes) -> None:
        self._ids.append(ids)
        self._masks.append(mask)
        self._hashes.append(messages_sha256)
        self._buffered += len(ids)
        in_shard = (self.rows + len(self._hashes)) % self.rows_per_shard
        if self._buffered >= GROUP_TOKENS or in_shard == 0:
            self._flush()

    def _flush(self) -> None:
        if not self._hashes:
            return
        n = len(self._hashes)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum([len(a) for a in self._ids], out=offsets[1:])
        ids = np.concatenate(self._ids) if n else np.zeros(0, np.int32)
        mask = np.concatenate(self._masks) if n else np.zeros(0, np.uint8)
        labels = ids.copy()
        labels[mask == 0] = IGNORE
        table = pa.Table.from_arrays(
            [
                list_array(offsets, ids, pa.int32()),
                list_array(offsets, labels, pa.int32()),
                list_array(offsets, np.ones(len(ids), np.int8), pa.int8()),
                hex_strings(b"".join(self._hashes)),
            ],
            schema=SCHEMA,
        )
        self.files.write(self.rows // self.rows_per_shard, table)
        self.rows += n
        self.tokens += len(ids)
        self.trained_tokens += int(np.count_nonzero(mask))
        self._ids, self._masks, self._hashes, self._buffered = [], [], [], 0

    def close(self) -> list[ShardFile]:
        self._flush()
        return self.files.close()


def manifest_of(
    source: SourceInfo | None, sides: dict[str, tuple[TokenizedWriter, list[ShardFile]]], unrenderable: int
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for side, (writer, shards) in sides.items():
        splits[side] = {
            "rows": writer.rows,
            "tokens": writer.tokens,
            "trained_tokens": writer.trained_tokens,
            "shards": [{"name": f.name, "rows": f.rows, "sha256": f.sha256, "size": f.size} for f in shards],
        }
    return {
        "format": FORMAT,
        "template": source.template if source else None,
        "profile": source.profile if source else None,
        "encoding": source.encoding if source else None,
        "tokenizer_sha256": source.tokenizer_sha256 if source else None,
        "template_sha256": source.template_sha256 if source else None,
        "columns": {field.name: str(field.type) for field in SCHEMA},
        "compression": {"codec": COMPRESSION, "level": COMPRESSION_LEVEL},
        "splits": splits,
        "rows": sum(s["rows"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "trained_tokens": sum(s["trained_tokens"] for s in splits.values()),
        "unrenderable": unrenderable,
    }
