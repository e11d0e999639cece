"""Token-sequence packing: documents into sequences of at most `seq_len` tokens, best-fit-decreasing
over the whole dataset.

A document is one training view (or one piece of it, see `prepare`): its token ids, its labels
(the token id where the view trains, -100 elsewhere) and the token offsets where a new message
starts. Packing places every kept document whole inside exactly one sequence, in its own order,
and records where each document starts (`cu_seqlens`), which document it is (`doc_ids`) and
positions that restart at 0 at every document, so attention and positions never cross documents.
Nothing is padded inside a sequence: padding is `seq_len - length`, reported, never written.

`best_fit_decreasing` works on lengths only (a compact summary, whatever the dataset size): the
documents sorted by decreasing length, ties by index (a counting sort, since lengths are bounded
by `seq_len`), each put into the open sequence with the least room that still fits it (ties: the
lowest sequence index), or a new sequence. Open sequences are kept in buckets by remaining room;
the sorted list of rooms that have any sequence is searched by bisection, so each document costs
a few C-level list operations: O(n log seq_len) in all, about a second per million documents.

Labels are exact: -100 exactly where the view says not trained. Every document of a training view
begins with a header token, never trained, so the label that would predict a document's first
token from the previous document's last token is already -100 (TRL blanks it for this reason).
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Annotated, Literal, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from service.core.view import TrainingView

IGNORE = -100  # the label of a token that carries no loss

Oversize = Literal["drop", "truncate", "split"]
Outcome = Literal["kept", "dropped", "truncated", "split", "empty"]
OVERSIZE_POLICIES: tuple[Oversize, ...] = ("drop", "truncate", "split")


class PackedSequence(msgspec.Struct, frozen=True):
    """One packed sequence; `cu_seqlens[k]:cu_seqlens[k+1]` is the k-th document, `doc_ids[k]` its id."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    doc_ids: list[int]
    cu_seqlens: list[int]
    length: int
    seq_len: int

    @property
    def padding(self) -> int:
        return self.seq_len - self.length


class PackStats(msgspec.Struct, frozen=True):
    """What packing did. `documents_in = kept + dropped + truncated + split + empty`."""

    seq_len: int
    policy: str
    documents_in: int
    kept: int  # fitted whole
    dropped: int  # longer than seq_len under "drop"
    truncated: int  # longer than seq_len, first seq_len tokens kept ("truncate")
    split: int  # longer than seq_len, cut at turn boundaries ("split")
    empty: int  # no tokens at all: nothing to place
    pieces: int  # documents actually placed (a split document counts once per piece)
    split_turns_truncated: int  # single turns longer than seq_len, cut short while splitting
    tokens_in: int
    tokens_cut: int  # tokens of oversize documents left out (dropped, truncated away)
    sequences: int
    real_tokens: int
    slots: int  # sequences x seq_len
    padding_tokens: int  # slots - real_tokens
    efficiency: float  # real_tokens / slots (1.0 when there is nothing to pack)
    lower_bound: int  # ceil(real_tokens / seq_len): no packing can use fewer sequences


class Document(NamedTuple):
    doc_id: int
    input_ids: Sequence[int]
    labels: Sequence[int]
    turn_starts: Sequence[int]  # token offsets where a new message starts (0 and len optional)


class Prepared(NamedTuple):
    """The pieces (input_ids, labels) of one document after the oversize policy, where each came
    from (`spans[k]` is the token range [start, end) of piece k in the document), and what happened."""

    pieces: list[tuple[list[int], list[int]]]
    spans: list[tuple[int, int]]
    outcome: Outcome
    tokens_cut: int
    turns_truncated: int


def best_fit_decreasing(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Indices of the documents of each sequence, best-fit-decreasing over all of `lengths`.

    Deterministic: documents are taken by decreasing length, ties by index; each goes to the open
    sequence with the least room that fits it, ties to the lowest sequence index; sequences are
    numbered in the order they are opened and list their documents in the order placed. Every
    length must be in 1..seq_len (apply the oversize policy first).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    by_length: list[list[int]] = [[] for _ in range(seq_len + 1)]
    for index, n in enumerate(lengths):
        if not 0 < n <= seq_len:
            raise ValueError(f"document {index} has length {n}, outside 1..{seq_len}")
        by_length[n].append(index)

    bins: list[list[int]] = []
    # rooms[r] holds (as a heap) the indices of the open sequences with exactly r tokens of room;
    # `nonempty` is the sorted list of r > 0 whose heap is not empty.
    rooms: list[list[int]] = [[] for _ in range(seq_len + 1)]
    nonempty: list[int] = []
    heappush, heappop = heapq.heappush, heapq.heappop
    for n in range(seq_len, 0, -1):
        group = by_length[n]
        if not group:
            continue
        for index in group:
            k = bisect_left(nonempty, n)
            if k == len(nonempty):  # nothing fits: open a new sequence
                b = len(bins)
                bins.append([index])
                room = seq_len - n
            else:
                r = nonempty[k]
                heap = rooms[r]
                b = heappop(heap)
                if not heap:
                    del nonempty[k]
                bins[b].append(index)
                room = r - n
            if room:
                heap = rooms[room]
                if not heap:
                    insort(nonempty, room)
                heappush(heap, b)
    return bins


def first_fit_decreasing(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """The plain reference: each document (decreasing length, ties by index) into the first sequence
    with room. Quadratic; for tests and comparisons on small inputs."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    loads: list[int] = []
    for index in order:
        n = lengths[index]
        for b, load in enumerate(loads):
            if load + n <= seq_len:
                bins[b].append(index)
                loads[b] += n
                break
        else:
            bins.append([index])
            loads.append(n)
    return bins


def _turn_bounds(n: int, turn_starts: Iterable[int]) -> list[int]:
    inner = sorted({t for t in turn_starts if 0 < t < n})
    return [0, *inner, n]


def piece_spans(
    n: int, seq_len: int, policy: Oversize, turn_starts: Iterable[int] = ()
) -> tuple[list[tuple[int, int]], Outcome, int, int]:
    """The oversize policy on a document of `n` tokens, from its length and turn offsets alone:
    (the token range [start, end) of each piece, outcome, tokens cut, single turns truncated).

    A document of at most `seq_len` tokens is kept whole. A longer one is dropped ("drop"), cut to
    its first `seq_len` tokens ("truncate"), or cut at turn boundaries ("split") into pieces of at
    most `seq_len` tokens, each as many whole turns as fit (greedily, in order); a single turn
    longer than `seq_len` keeps its first `seq_len` tokens. Each piece becomes a document.
    """
    if policy not in OVERSIZE_POLICIES:
        raise ValueError(f"unknown oversize policy {policy!r}; known: {', '.join(OVERSIZE_POLICIES)}")
    if n == 0:
        return [], "empty", 0, 0
    if n <= seq_len:
        return [(0, n)], "kept", 0, 0
    if policy == "drop":
        return [], "dropped", n, 0
    if policy == "truncate":
        return [(0, seq_len)], "truncated", n - seq_len, 0
    bounds = _turn_bounds(n, turn_starts)
    spans: list[tuple[int, int]] = []
    cut = turns_truncated = 0
    k = 0  # bounds[k] is where the next piece starts
    while k < len(bounds) - 1:
        start = bounds[k]
        end_k = k + 1
        while end_k + 1 < len(bounds) and bounds[end_k + 1] - start <= seq_len:
            end_k += 1
        end = bounds[end_k]
        if end - start > seq_len:  # one turn alone is too long: keep its head
            cut += end - start - seq_len
            turns_truncated += 1
            end = start + seq_len
        spans.append((start, end))
        k = end_k
    return spans, "split", cut, turns_truncated


def prepare(
    doc_tokens: Sequence[int],
    doc_labels: Sequence[int],
    seq_len: int,
    policy: Oversize,
    turn_starts: Sequence[int] = (),
) -> Prepared:
    """Apply the oversize policy (`piece_spans`) to one document held in memory."""
    if len(doc_tokens) != len(doc_labels):
        raise ValueError(f"{len(doc_tokens)} tokens but {len(doc_labels)} labels")
    spans, outcome, cut, turns_truncated = piece_spans(len(doc_tokens), seq_len, policy, turn_starts)
    pieces = [(list(doc_tokens[a:b]), list(doc_labels[a:b])) for a, b in spans]
    return Prepared(pieces, spans, outcome, cut, turns_truncated)


def document_from_view(view: TrainingView) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, labels, turn_starts) of a training view: labels are -100 where not trained;
    a turn starts wherever a segment's message_index differs from the previous segment's."""
    input_ids: list[int] = []
    labels: list[int] = []
    turn_starts: list[int] = []
    previous: int | None = None
    for segment in view.segments:
        if input_ids and segment.message_index != previous and turn_starts[-1:] != [len(input_ids)]:
            turn_starts.append(len(input_ids))
        previous = segment.message_index
        input_ids += segment.token_ids
        labels += segment.token_ids if segment.trained else [IGNORE] * len(segment.token_ids)
    return input_ids, labels, turn_starts


def assemble(
    pieces: Sequence[tuple[int, Sequence[int], Sequence[int]]], bins: Sequence[Sequence[int]], seq_len: int
) -> list[PackedSequence]:
    """The sequences of a packing plan: `pieces[i]` is (doc_id, input_ids, labels), `bins` from
    `best_fit_decreasing` over their lengths."""
    out: list[PackedSequence] = []
    for members in bins:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        doc_ids: list[int] = []
        cu = [0]
        for index in members:
            doc_id, ids, labs = pieces[index]
            input_ids += ids
            labels += labs
            position_ids += range(len(ids))
            doc_ids.append(doc_id)
            cu.append(len(input_ids))
        if len(input_ids) > seq_len:
            raise ValueError(f"a sequence of {len(input_ids)} tokens exceeds seq_len {seq_len}")
        out.append(PackedSequence(input_ids, labels, position_ids, doc_ids, cu, len(input_ids), seq_len))
    return out


class Plan(NamedTuple):
    """A packing plan over pieces numbered in the order they were added: sequence k holds the
    pieces `members[starts[k]:starts[k + 1]]`, in that order."""

    members: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int32]  # per piece
    stats: PackStats


class Planner:
    """Packing from lengths and turn offsets only: the oversize policy per document as it comes,
    then best-fit-decreasing over every piece at once. Holds a few integers per piece, never a
    token, so a build can plan any dataset and fetch the tokens of each sequence as it writes it."""

    def __init__(self, seq_len: int, policy: Oversize = "split") -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if policy not in OVERSIZE_POLICIES:
            raise ValueError(f"unknown oversize policy {policy!r}; known: {', '.join(OVERSIZE_POLICIES)}")
        self.seq_len = seq_len
        self.policy = policy
        self.counts: dict[Outcome, int] = {"kept": 0, "dropped": 0, "truncated": 0, "split": 0, "empty": 0}
        self.lengths = array("i")
        self.tokens_in = self.tokens_cut = self.turns_truncated = 0

    def add(self, n: int, turn_starts: Iterable[int] = ()) -> list[tuple[int, int]]:
        """One document of `n` tokens; the spans of its pieces (numbered on from the previous ones)."""
        spans, outcome, cut, turns = piece_spans(n, self.seq_len, self.policy, turn_starts)
        self.counts[outcome] += 1
        self.tokens_in += n
        self.tokens_cut += cut
        self.turns_truncated += turns
        self.lengths.extend(b - a for a, b in spans)
        return spans

    def plan(self) -> Plan:
        lengths = np.frombuffer(self.lengths, dtype=np.int32) if self.lengths else np.zeros(0, np.int32)
        bins = best_fit_decreasing(self.lengths, self.seq_len)
        starts = np.zeros(len(bins) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in bins], out=starts[1:])
        members = np.fromiter(chain.from_iterable(bins), dtype=np.int64, count=int(starts[-1]))
        del bins
        seq_len = self.seq_len
        real = int(lengths.sum(dtype=np.int64))
        slots = (len(starts) - 1) * seq_len
        c = self.counts
        stats = PackStats(
            seq_len=seq_len,
            policy=self.policy,
            documents_in=sum(c.values()),
            kept=c["kept"],
            dropped=c["dropped"],
            truncated=c["truncated"],
            split=c["split"],
            empty=c["empty"],
            pieces=len(lengths),
            split_turns_truncated=self.turns_truncated,
            tokens_in=self.tokens_in,
            tokens_cut=self.tokens_cut,
            sequences=len(starts) - 1,
            real_tokens=real,
            slots=slots,
            padding_tokens=slots - real,
            efficiency=real / slots if slots else 1.0,
            lower_bound=-(-real // seq_len),
        )
        return Plan(members, starts, lengths, stats)


def pack(
    documents: Iterable[Document | tuple[int, Sequence[int], Sequence[int], Sequence[int]]],
    seq_len: int,
    policy: Oversize = "split",
) -> tuple[list[PackedSequence], PackStats]:
    """Apply the oversize policy to every document, then pack all pieces at once (best-fit-decreasing).

    Holds every token in memory: for tests and small inputs. A build plans with `Planner` and
    streams the tokens of each sequence from its spill files instead; both give the same sequences."""
    planner = Planner(seq_len, policy)
    pieces: list[tuple[int, Sequence[int], Sequence[int]]] = []
    for doc_id, input_ids, labels, turn_starts in documents:
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} tokens but {len(labels)} labels")
        for a, b in planner.add(len(input_ids), turn_starts):
            pieces.append((doc_id, input_ids[a:b], labels[a:b]))
    plan = planner.plan()
    members = plan.members.tolist()
    starts = plan.starts.tolist()
    bins = [members[starts[k] : starts[k + 1]] for k in range(len(starts) - 1)]
    return assemble(pieces, bins, seq_len), plan.stats


SEQ_LEN_MAX = 1 << 20  # tokens per packed sequence (a request's bound: decoding checks it)
ROWS_PER_SHARD_MAX = 1_000_000  # sequences per Parquet shard


class PackedSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Token sequences for self-hosted training, packed over the whole dataset.

    The tokens come from a built-in `template` or a tenant's model `profile`: exactly one is set
    after decoding (neither given: the `harmony` template)."""

    seq_len: Annotated[int, msgspec.Meta(ge=1, le=SEQ_LEN_MAX)] = 4096
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    profile: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    oversize: Oversize = "split"  # what happens to an example longer than seq_len
    rows_per_shard: Annotated[int, msgspec.Meta(ge=1, le=ROWS_PER_SHARD_MAX)] = 10_000

    def __post_init__(self) -> None:
        one_source(self)


DEFAULT_TEMPLATE = "harmony"


def one_source(spec: PackedSpec | TokenizedSpec) -> None:
    """`template` defaults to harmony when no profile is named; naming both is an error."""
    if spec.profile is None and spec.template is None:
        spec.template = DEFAULT_TEMPLATE
    elif spec.profile is not None and spec.template is not None:
        raise ValueError("name either a template or a profile, not both")


class TokenizedSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One row per training example, unpacked: input_ids, labels, attention_mask, messages_hash."""

    template: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    profile: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    rows_per_shard: Annotated[int, msgspec.Meta(ge=1, le=ROWS_PER_SHARD_MAX)] = 10_000

    def __post_init__(self) -> None:
        one_source(self)
