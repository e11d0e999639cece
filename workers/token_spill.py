"""Token documents spilled by each build shard, read back a slice at a time by the finalize.

A shard writes, per token source, two work files: `.tok`, every document's token ids (int32,
little-endian) one after the other followed by every document's trained mask (one byte per
token, 1 where trained), and `.idx`, a small msgpack index: per document its length (-1 when
the template refused the conversation), its turn starts, and the SHA-256 of its JSONL line;
plus what the source was. The finalize plans from the indexes alone and reads the token slices
it needs with `pread`, so it holds lengths and offsets for the dataset and tokens for one row
group, never the dataset's tokens.
"""

from __future__ import annotations

import os
import shutil
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from service.store.blobs import BlobStore, LocalBlobStore
from workers.token_source import Document, SourceInfo

UNRENDERABLE = -1
CHUNK_TOKENS = 1 << 20  # tokens `SpillReader.documents` reads at once
_LITTLE = sys.byteorder == "little"


class SpillIndex(msgspec.Struct, frozen=True):
    source: SourceInfo
    lengths: bytes  # int32 per document, -1 when unrenderable
    turn_counts: bytes  # int32 per document
    turns: bytes  # int32, every document's turn starts, in order
    hashes: bytes  # 32 bytes per document: SHA-256 of its JSONL line
    tokens: int


class SpillWriter:
    """One shard's documents for one source, in the order of the shard's output rows, written to
    files under `folder` as they come (ids, and masks beside them), so a shard holds about a
    megabyte of tokens whatever its size."""

    FLUSH = 1 << 18  # tokens buffered before they are written out

    def __init__(self, source: SourceInfo, folder: Path) -> None:
        self.source = source
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "tokens.tok"
        self._ids_file = self.path.open("wb")
        self._mask_path = folder / "mask.part"
        self._mask_file = self._mask_path.open("wb")
        self.ids: array[int] = array("i")
        self.mask = bytearray()
        self.tokens = 0
        self.lengths: array[int] = array("i")
        self.turn_counts: array[int] = array("i")
        self.turns: array[int] = array("i")
        self.hashes = bytearray()

    def add(self, document: Document | None, line_sha256: bytes) -> None:
        """One row's document (None: the template refused it) and the SHA-256 of its JSONL line."""
        self.hashes += line_sha256
        if document is None:
            self.lengths.append(UNRENDERABLE)
            self.turn_counts.append(0)
            return
        ids, mask, turns = document
        self.ids.extend(ids)
        self.mask += mask
        self.tokens += len(ids)
        self.lengths.append(len(ids))
        self.turn_counts.append(len(turns))
        self.turns.extend(turns)
        if len(self.ids) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if not _LITTLE:  # the files are little-endian everywhere
            self.ids.byteswap()
        self.ids.tofile(self._ids_file)
        self._mask_file.write(self.mask)
        self.ids = array("i")
        self.mask = bytearray()

    def finish(self) -> tuple[Path, bytes]:
        """(the .tok file: every id, then every mask byte; the .idx bytes)."""
        self._flush()
        self._mask_file.close()
        with self._mask_path.open("rb") as masks:
            shutil.copyfileobj(masks, self._ids_file, 1 << 20)
        self._ids_file.close()
        self._mask_path.unlink()
        lengths, counts, turns = self.lengths, self.turn_counts, self.turns
        if not _LITTLE:
            for a in (lengths, counts, turns):
                a.byteswap()
        index = SpillIndex(
            source=self.source,
            lengths=lengths.tobytes(),
            turn_counts=counts.tobytes(),
            turns=turns.tobytes(),
            hashes=bytes(self.hashes),
            tokens=self.tokens,
        )
        return self.path, msgspec.msgpack.encode(index)


def spill_keys(prefix: str, shard: int, tag: str) -> tuple[str, str]:
    return f"{prefix}shard-{shard:05d}.{tag}.tok", f"{prefix}shard-{shard:05d}.{tag}.idx"


class ShardDocs:
    """One shard's index, decoded to arrays, and where each document's tokens start."""

    def __init__(self, index: SpillIndex) -> None:
        self.source = index.source
        self.lengths: npt.NDArray[np.int32] = np.frombuffer(index.lengths, dtype="<i4")
        counts = np.frombuffer(index.turn_counts, dtype="<i4")
        self.turns: npt.NDArray[np.int32] = np.frombuffer(index.turns, dtype="<i4")
        self.turn_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.turn_offsets[1:])
        self.starts = np.zeros(len(self.lengths) + 1, dtype=np.int64)  # token offset of each document
        np.cumsum(np.maximum(self.lengths, 0), out=self.starts[1:])
        self.hashes = index.hashes
        self.tokens = index.tokens

    def __len__(self) -> int:
        return len(self.lengths)

    def turn_starts(self, k: int) -> list[int]:
        return self.turns[self.turn_offsets[k] : self.turn_offsets[k + 1]].tolist()  # type: ignore[no-any-return]

    def sha256(self, k: int) -> bytes:
        return self.hashes[32 * k : 32 * k + 32]


class SpillReader:
    """Reads the spill files of a build's shards for one source tag. A local blob store's files are
    read where they are; any other store's are copied (streamed) into `work` first."""

    def __init__(self, blobs: BlobStore, prefix: str, tag: str, work: Path) -> None:
        self.blobs = blobs
        self.prefix = prefix
        self.tag = tag
        self.work = work
        self._fds: dict[int, int] = {}
        self._tokens: dict[int, int] = {}

    def index(self, shard: int) -> ShardDocs:
        _, idx = spill_keys(self.prefix, shard, self.tag)
        docs = ShardDocs(msgspec.msgpack.decode(self.blobs.get(idx), type=SpillIndex))
        self._tokens[shard] = docs.tokens
        return docs

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            tok, _ = spill_keys(self.prefix, shard, self.tag)
            if isinstance(self.blobs, LocalBlobStore):
                path = self.blobs._path(tok)
            else:
                path = self.work / f"spill-{self.tag}-{shard:05d}.tok"
                with path.open("wb") as f:
                    for chunk in self.blobs.open_chunks(tok):
                        f.write(chunk)
            fd = self._fds[shard] = os.open(path, os.O_RDONLY)
        return fd

    def read_into(
        self, shard: int, start: int, ids: npt.NDArray[np.int32], mask: npt.NDArray[np.uint8]
    ) -> None:
        """Tokens [start, start + len(ids)) of the shard's token stream into `ids` and `mask`."""
        fd = self._fd(shard)
        n = len(ids)
        if n == 0:
            return
        got = os.preadv(fd, [ids.view(np.uint8).data], 4 * start)
        got += os.preadv(fd, [mask.data], 4 * self._tokens[shard] + start)
        if got != 5 * n:
            raise OSError(f"spill file of shard {shard} ({self.tag}) is short")
        if not _LITTLE:
            ids.byteswap(inplace=True)

    def documents(
        self, shard: int, docs: ShardDocs, chunk_tokens: int = CHUNK_TOKENS
    ) -> Iterator[tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]] | None]:
        """Every document of the shard, in order: its (ids, mask), views into chunks of about
        `chunk_tokens` tokens read with one `read_into` each (not two reads per document), or
        None when the template refused it. A chunk lives while its views do: memory stays at a
        chunk or two whatever the shard's size."""
        lengths = docs.lengths.tolist()
        starts = docs.starts
        n = len(lengths)
        a = 0
        while a < n:
            b = int(np.searchsorted(starts, starts[a] + chunk_tokens, side="right")) - 1
            b = min(n, max(b, a + 1))
            first = int(starts[a])
            total = int(starts[b]) - first
            ids = np.empty(total, dtype=np.int32)
            mask = np.empty(total, dtype=np.uint8)
            self.read_into(shard, first, ids, mask)
            for k in range(a, b):
                size = lengths[k]
                if size < 0:
                    yield None
                    continue
                lo = int(starts[k]) - first
                yield ids[lo : lo + size], mask[lo : lo + size]
            a = b

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
