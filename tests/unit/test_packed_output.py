"""Packed Parquet shards: the round trip, identical bytes on every write, and the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from service.core.conversation import ChatExample
from service.core.packing import Document, PackedSequence, PackStats, document_from_view, pack
from service.core.templates import get_template
from service.core.view import build_view
from tests.conftest import mtbench_conversations
from workers.packed_output import MANIFEST, SCHEMA, shard_bytes, write_shards


@pytest.fixture(scope="module")
def packed() -> tuple[list[PackedSequence], PackStats]:
    template = get_template("chatml")
    views = [build_view(msgspec.convert(c, ChatExample), template) for c in mtbench_conversations()]
    documents = [Document(i, *document_from_view(v)) for i, v in enumerate(views)]
    return pack(documents, 1024, "split")


def read_back(path: Path) -> list[PackedSequence]:
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == SCHEMA
    return [
        PackedSequence(
            row["input_ids"],
            row["labels"],
            row["position_ids"],
            row["doc_ids"],
            row["cu_seqlens"],
            row["length"],
            1024,
        )
        for row in table.to_pylist()
    ]


def test_round_trip_and_manifest(tmp_path: Path, packed: tuple[list[PackedSequence], PackStats]) -> None:
    sequences, stats = packed
    assert len(sequences) > 7
    manifest = write_shards(
        sequences, tmp_path, rows_per_shard=7, template="chatml", encoding="cl100k_im", stats=stats
    )
    shards = manifest["shards"]
    assert [s["name"] for s in shards] == [f"packed-{i:05d}.parquet" for i in range(len(shards))]
    assert [s["rows"] for s in shards] == [7] * (len(sequences) // 7) + (
        [len(sequences) % 7] if len(sequences) % 7 else []
    )
    back: list[PackedSequence] = []
    for s in shards:
        data = (tmp_path / s["name"]).read_bytes()
        assert s["size"] == len(data)
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
        part = read_back(tmp_path / s["name"])
        assert len(part) == s["rows"]
        back += part
    assert back == sequences
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST] + [s["name"] for s in shards])

    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk == manifest
    assert (manifest["seq_len"], manifest["template"], manifest["encoding"]) == (1024, "chatml", "cl100k_im")
    totals = manifest["totals"]
    assert totals["sequences"] == stats.sequences == len(sequences)
    assert totals["real_tokens"] == stats.real_tokens
    assert totals["slots"] == stats.slots == len(sequences) * 1024
    assert totals["padding_tokens"] == stats.padding_tokens
    assert totals["documents"] == stats.pieces
    assert totals["lower_bound"] == stats.lower_bound
    assert totals["trained_tokens"] == sum(1 for s in sequences for x in s.labels if x != -100) > 0
    assert totals["packing"]["documents_in"] == len(mtbench_conversations())
    assert manifest["efficiency"] == pytest.approx(stats.efficiency)


def test_types_are_as_documented(tmp_path: Path, packed: tuple[list[PackedSequence], PackStats]) -> None:
    write_shards(packed[0], tmp_path, rows_per_shard=1000)
    schema = pq.read_schema(tmp_path / "packed-00000.parquet")
    assert schema.field("input_ids").type == pa.list_(pa.int32())
    assert schema.field("doc_ids").type == pa.list_(pa.int64())
    assert schema.field("length").type == pa.int32()
    meta = pq.read_metadata(tmp_path / "packed-00000.parquet")
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_identical_bytes_on_every_write(
    tmp_path: Path, packed: tuple[list[PackedSequence], PackStats]
) -> None:
    sequences, stats = packed
    outputs: list[dict[str, bytes]] = []
    for _ in range(2):
        files: dict[str, bytes] = {}
        write_shards(
            sequences, files.__setitem__, rows_per_shard=5, seq_len=1024, template="chatml", stats=stats
        )
        outputs.append(files)
    assert outputs[0] == outputs[1]
    # a directory write gives the same bytes as the callback
    write_shards(sequences, tmp_path / "out", rows_per_shard=5, seq_len=1024, template="chatml", stats=stats)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == outputs[0]
    # copies of the same sequences (fresh objects) give the same shard bytes
    copies = msgspec.json.decode(msgspec.json.encode(sequences[:5]), type=list[PackedSequence])
    assert shard_bytes(copies) == outputs[0]["packed-00000.parquet"]


def test_no_sequences_writes_only_the_manifest(tmp_path: Path) -> None:
    manifest = write_shards([], tmp_path, seq_len=512, template="harmony", encoding="o200k_harmony")
    assert manifest["shards"] == []
    assert manifest["totals"]["sequences"] == 0
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]
    with pytest.raises(ValueError, match="rows_per_shard"):
        write_shards([], tmp_path, rows_per_shard=0)
