"""A shard's spilled token documents read back in chunks are the documents written, in order."""

from __future__ import annotations

import random
from array import array
from pathlib import Path

import pytest

from service.store.blobs import LocalBlobStore
from workers.token_source import SourceInfo
from workers.token_spill import ShardDocs, SpillReader, SpillWriter, spill_keys

INFO = SourceInfo(
    template="harmony", profile=None, encoding="o200k_harmony", tokenizer_sha256="t", template_sha256="s"
)


def _documents(rng: random.Random, n: int) -> list[tuple[array[int], bytes, array[int]] | None]:
    docs: list[tuple[array[int], bytes, array[int]] | None] = []
    for _ in range(n):
        if rng.random() < 0.15:
            docs.append(None)
            continue
        size = rng.choice([0, 1, rng.randint(2, 40), rng.randint(100, 300)])
        ids = array("i", (rng.randrange(201_088) for _ in range(size)))
        mask = bytes(rng.randint(0, 1) for _ in range(size))
        docs.append((ids, mask, array("i", [0] if size else [])))
    return docs


@pytest.mark.parametrize("chunk_tokens", [1, 3, 64, 1 << 20])
def test_documents_read_in_chunks_equal_what_was_written(tmp_path: Path, chunk_tokens: int) -> None:
    rng = random.Random(chunk_tokens)
    blobs = LocalBlobStore(tmp_path / "blobs")
    written = _documents(rng, 120)
    writer = SpillWriter(INFO, tmp_path / "spill")
    writer.FLUSH = 50  # several flushes, so the ids and masks files are written in pieces
    for k, doc in enumerate(written):
        writer.add(doc, bytes([k]) * 32)
    path, index = writer.finish()
    tok, idx = spill_keys("job/work/", 0, "packed")
    blobs.put_file(tok, path, move=True)
    blobs.put(idx, index)
    reader = SpillReader(blobs, "job/work/", "packed", tmp_path / "work")
    docs: ShardDocs = reader.index(0)
    try:
        got = list(reader.documents(0, docs, chunk_tokens))
    finally:
        reader.close()
    assert len(got) == len(written)
    for k, (want, have) in enumerate(zip(written, got, strict=True)):
        assert docs.sha256(k) == bytes([k]) * 32
        if want is None:
            assert have is None
            continue
        assert have is not None
        assert have[0].tolist() == want[0].tolist()
        assert have[1].tobytes() == want[1]
