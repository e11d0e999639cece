"""Exact and near-duplicate detection, decided from compact per-example summaries.

A build runs in shards; each shard keeps, per example, its content key (`pipeline.content_key`,
16 bytes) and, when near-duplicate detection is on, a MinHash signature (`signature`, 4 bytes
per permutation: 256 bytes at the default 64). The finalize step calls `find_duplicates` on
those summaries alone, in dataset order, and never needs the raw data.

- Exact duplicates: equal content keys; the first in dataset order is kept.
- Near duplicates: MinHash over 5-word shingles of the normalized text of every message
  (NFC, lowercased, whitespace collapsed; tool-call names and arguments count as text). Words
  are hashed with xxh3-64, a shingle's hash mixes its words' hashes (splitmix64's finalizer),
  and permutation i maps a shingle hash h to a_i * h + b_i mod 2**64, with a_i (odd) and b_i
  drawn from xxh3-64 of a fixed label with per-permutation seeds: no Python `hash()`, so
  signatures are the same in every process and on every machine (stored little-endian). A
  slot keeps the low 32 bits of that permutation's minimum. LSH banding proposes candidate
  pairs, an estimated Jaccard similarity >= `threshold` (the share of equal signature slots)
  confirms them, and union-find groups them; each group keeps its first example in dataset
  order.
- Texts with fewer shingles than the shingle size (under 9 words) get no signature and are
  only ever exact duplicates: on so few shingles the estimate means little.

Grouping is transitive: when A~B and B~C, C is dropped as a duplicate of A even if A and C
alone are below the threshold; the similarity reported for C is the one to A, the kept one.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import xxhash

from service.core.conversation import Example, Message, PreferenceExample, text_of

SHINGLE = 5
_SLOT = np.dtype("<u4")  # one signature slot: the low 32 bits of a permutation's minimum
_MASK64 = (1 << 64) - 1
_POLY = np.uint64(0x9E3779B97F4A7C15)  # combines word hashes into a shingle hash
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's finalizer constants
_MIX2 = np.uint64(0x94D049BB133111EB)
_ROWS_PER_CHUNK = 1 << 15  # shingles per (rows x permutations) block: 16 MB at 64 permutations
_TEXTS_PER_BATCH = 2048
_RECALL_AT_THRESHOLD = 0.99  # banding is chosen so a pair exactly at the threshold is a candidate this often
_PAIRWISE_BUCKET = 64  # buckets up to this size enumerate all pairs at once; larger ones go row by row

U64 = npt.NDArray[np.uint64]


class DedupeSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    exact: bool = True
    near: bool = False
    threshold: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.85
    num_perm: Annotated[int, msgspec.Meta(ge=16, le=1024)] = 64

    def __post_init__(self) -> None:
        # Construction bypasses the Meta constraints (only decoding checks them): check here too.
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], not {self.threshold}")
        if not 16 <= self.num_perm <= 1024:
            raise ValueError(f"num_perm must be between 16 and 1024, not {self.num_perm}")


class Duplicate(msgspec.Struct, frozen=True):
    """Example `index` is dropped as a duplicate of example `of` (an earlier one)."""

    index: int
    of: int
    similarity: float  # estimated Jaccard similarity to `of`; 1.0 for exact duplicates
    kind: Literal["exact", "near"]


class DedupeResult(msgspec.Struct):
    drops: list[Duplicate]  # sorted by index

    @property
    def dropped(self) -> frozenset[int]:
        return frozenset(d.index for d in self.drops)

    def count(self, kind: Literal["exact", "near"]) -> int:
        return sum(1 for d in self.drops if d.kind == kind)


# --- text and signatures ---------------------------------------------------------------------


def _message_text(message: Message) -> str:
    parts = [text_of(message)]
    for call in message.tool_calls or ():
        parts += [call.function.name, call.function.arguments]
    if message.function_call is not None:
        parts += [message.function_call.name, message.function_call.arguments]
    return "\n".join(parts)


def example_text(example: Example) -> str:
    """The text of every message of an example (both replies of a preference pair)."""
    if isinstance(example, PreferenceExample):
        messages = [*example.input.messages, *example.preferred_output, *example.non_preferred_output]
    else:
        messages = example.messages
    return "\n".join(_message_text(m) for m in messages)


def normalize(text: str) -> str:
    """NFC, lowercased, runs of whitespace as one space, no leading or trailing space."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def _permutations(num_perm: int) -> tuple[U64, U64]:
    """(a_i, b_i) per permutation, a_i odd: x -> a_i * x + b_i (mod 2**64) is a bijection."""
    draws = [xxhash.xxh3_64_intdigest(b"tuneset-minhash-permutation", seed=i) for i in range(2 * num_perm)]
    a = np.array(draws[0::2], dtype=np.uint64) | np.uint64(1)
    return a, np.array(draws[1::2], dtype=np.uint64)


def _mix(x: U64) -> U64:
    """splitmix64's finalizer, in place: a bijection on 64-bit values that spreads every bit."""
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _batch_signatures(texts: Sequence[str], perms: tuple[U64, U64]) -> list[bytes | None]:
    a, b = perms
    num_perm = len(a)
    words: list[int] = []
    spans: list[tuple[int, int]] = []  # (first word, number of shingles) per text
    for text in texts:
        normal = normalize(text)
        tokens = normal.encode().split(b" ") if normal else []  # the words as UTF-8, in one encode
        spans.append((len(words), len(tokens) - SHINGLE + 1))
        words += map(xxhash.xxh3_64_intdigest, tokens)
    out: list[bytes | None] = [None] * len(texts)
    long = [t for t, (_, n) in enumerate(spans) if n >= SHINGLE]
    if not long:
        return out
    w = np.array(words, dtype=np.uint64)
    # A shingle hash for every word position (positions that cross texts are discarded below).
    n_pos = len(w) - SHINGLE + 1
    acc = w[:n_pos].copy()
    for j in range(1, SHINGLE):
        acc *= _POLY
        acc += w[j : j + n_pos]
    starts = np.concatenate([np.arange(spans[t][0], spans[t][0] + spans[t][1]) for t in long])
    shingles = _mix(acc[starts])
    owner = np.repeat(np.arange(len(long)), [spans[t][1] for t in long])  # row in `mins` per shingle
    # Permutations along axis 0 and shingles along axis 1, so each reduction runs over contiguous memory.
    mins = np.full((num_perm, len(long)), np.iinfo(np.uint64).max, dtype=np.uint64)
    for lo in range(0, len(shingles), _ROWS_PER_CHUNK):
        block = a[:, None] * shingles[None, lo : lo + _ROWS_PER_CHUNK]
        block += b[:, None]
        rows = owner[lo : lo + _ROWS_PER_CHUNK]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        part = np.minimum.reduceat(block, first, axis=1)
        mins[:, rows[first]] = np.minimum(mins[:, rows[first]], part)
    slots = np.ascontiguousarray((mins.T & np.uint64(0xFFFFFFFF)).astype(_SLOT))
    for row, t in enumerate(long):
        out[t] = slots[row].tobytes()
    return out


def text_signatures(texts: Iterable[str], num_perm: int = 64) -> list[bytes | None]:
    """MinHash signatures (`num_perm` * 4 bytes) of raw texts; None for texts too short to shingle."""
    perms = _permutations(num_perm)
    out: list[bytes | None] = []
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == _TEXTS_PER_BATCH:
            out += _batch_signatures(batch, perms)
            batch = []
    if batch:
        out += _batch_signatures(batch, perms)
    return out


def signatures(examples: Iterable[Example], num_perm: int = 64) -> list[bytes | None]:
    """The near-duplicate summaries of examples, for a shard to store beside the content keys."""
    return text_signatures((example_text(e) for e in examples), num_perm)


def signature(example: Example, num_perm: int = 64) -> bytes | None:
    return signatures([example], num_perm)[0]


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of two signatures: the share of equal slots."""
    if len(a) != len(b):
        raise ValueError("signatures of different sizes")
    x, y = np.frombuffer(a, dtype=_SLOT), np.frombuffer(b, dtype=_SLOT)
    return float(np.count_nonzero(x == y)) / len(x)


# --- grouping -----------------------------------------------------------------------------------


def bands_for(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows per band) with the most rows whose banding still makes a pair exactly at the
    threshold a candidate with probability >= 0.99: few false candidates, almost no misses."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= _RECALL_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:  # the smaller index is the root, so a group's root is its first example
            self.parent[max(a, b)] = min(a, b)


def _band_keys(m: npt.NDArray[np.uint32], band: int, rows: int) -> U64:
    """One 64-bit key per signature for one band (a collision only adds a candidate to check)."""
    cols = m[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.full(len(m), np.uint64(band + 1), dtype=np.uint64)
    for c in range(rows):
        key *= _POLY
        key ^= cols[:, c]
        _mix(key)
    return key


def _near_groups(sigs: Sequence[bytes], threshold: float, num_perm: int) -> _UnionFind:
    """Union-find over positions in `sigs`, joining pairs whose estimated Jaccard >= threshold."""
    n = len(sigs)
    uf = _UnionFind(n)
    need = math.ceil(threshold * num_perm - 1e-9)  # equal slots needed
    # Identical signatures need no banding: join them and band only one of each.
    first: dict[bytes, int] = {}
    distinct: list[int] = []
    for i, s in enumerate(sigs):
        j = first.setdefault(s, i)
        if j == i:
            distinct.append(i)
        else:
            uf.union(j, i)
    if len(distinct) < 2:
        return uf
    index = np.array(distinct, dtype=np.int64)
    m = np.frombuffer(b"".join(sigs[i] for i in distinct), dtype=_SLOT).reshape(len(distinct), num_perm)
    bands, rows = bands_for(num_perm, threshold)
    pair_codes: list[npt.NDArray[np.int64]] = []
    big: list[npt.NDArray[np.int64]] = []
    for band in range(bands):
        keys = _band_keys(m, band, rows)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        edges = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        bounds = np.r_[0, edges, len(keys)]
        sizes = np.diff(bounds)
        for b in np.flatnonzero(sizes > 1):
            members = np.sort(order[bounds[b] : bounds[b + 1]])
            if len(members) <= _PAIRWISE_BUCKET:
                a, c = np.triu_indices(len(members), 1)
                pair_codes.append(members[a] * len(distinct) + members[c])
            else:
                big.append(members)
    if pair_codes:
        codes = np.unique(np.concatenate(pair_codes))
        left, right = codes // len(distinct), codes % len(distinct)
        for lo in range(0, len(codes), _ROWS_PER_CHUNK):
            li, ri = left[lo : lo + _ROWS_PER_CHUNK], right[lo : lo + _ROWS_PER_CHUNK]
            equal = np.count_nonzero(m[li] == m[ri], axis=1)
            for x, y in zip(li[equal >= need].tolist(), ri[equal >= need].tolist(), strict=True):
                uf.union(distinct[x], distinct[y])
    for members in big:  # large buckets: each member against the later ones, a row at a time
        for p in range(len(members) - 1):
            rest = members[p + 1 :]
            equal = np.count_nonzero(m[rest] == m[members[p]], axis=1)
            for y in rest[equal >= need].tolist():
                uf.union(int(index[members[p]]), int(index[y]))
    return uf


def find_duplicates(
    keys: Sequence[bytes], sigs: Sequence[bytes | None] | None, spec: DedupeSpec
) -> DedupeResult:
    """Which examples to drop, from their content keys and (for near duplicates) signatures, both
    in dataset order. Exact duplicates are found first; near duplicates among the rest."""
    drops: dict[int, Duplicate] = {}
    if spec.exact:
        seen: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            j = seen.setdefault(key, i)
            if j != i:
                drops[i] = Duplicate(i, j, 1.0, "exact")
    if spec.near:
        if sigs is None or len(sigs) != len(keys):
            raise ValueError("near-duplicate detection needs one signature (or None) per example")
        size = spec.num_perm * _SLOT.itemsize
        positions: list[int] = []
        present: list[bytes] = []
        for i, s in enumerate(sigs):
            if s is None or i in drops:
                continue
            if len(s) != size:
                raise ValueError(f"signature of example {i} has {len(s)} bytes, not {size}")
            positions.append(i)
            present.append(s)
        uf = _near_groups(present, spec.threshold, spec.num_perm)
        for p, i in enumerate(positions):
            root = uf.find(p)
            if root != p:
                drops[i] = Duplicate(i, positions[root], similarity(present[p], present[root]), "near")
    return DedupeResult([drops[i] for i in sorted(drops)])
