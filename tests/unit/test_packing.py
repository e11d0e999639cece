"""Packing: every token of every kept document exactly once, in order, in one sequence; labels exact;
positions restart per document; nothing over seq_len; oversize policies counted; deterministic."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.conversation import ChatExample
from service.core.packing import (
    IGNORE,
    Document,
    Oversize,
    PackedSequence,
    best_fit_decreasing,
    document_from_view,
    first_fit_decreasing,
    pack,
    prepare,
)
from service.core.templates import get_template
from service.core.view import TrainingView, build_view
from tests.conftest import chat, mtbench_conversations
from tests.unit.test_view import conversations

POLICIES: list[Oversize] = ["drop", "truncate", "split"]


def reference_bfd(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Best-fit-decreasing written the slow, obvious way: decreasing length (ties by index), each into
    the sequence with the least room that fits (ties to the lowest sequence index), else a new one."""
    bins: list[list[int]] = []
    rooms: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[index]
        fits = [(room, b) for b, room in enumerate(rooms) if room >= n]
        if fits:
            _, b = min(fits)
            bins[b].append(index)
            rooms[b] -= n
        else:
            bins.append([index])
            rooms.append(seq_len - n)
    return bins


def expected_labels(view: TrainingView) -> list[int]:
    """-100 exactly where the view says not trained, the token id where it trains (straight from the view)."""
    return [t if trained else IGNORE for t, trained in zip(view.token_ids(), view.labels_mask(), strict=True)]


def check_packing(views: list[TrainingView], seq_len: int, policy: Oversize) -> list[PackedSequence]:
    documents = [Document(i, *document_from_view(v)) for i, v in enumerate(views)]
    sequences, stats = pack(documents, seq_len, policy)

    # what each document should become, computed from the views, not from the packer's output
    expected: Counter[tuple[int, tuple[int, ...], tuple[int, ...]]] = Counter()
    outcomes: Counter[str] = Counter()
    for doc_id, view in enumerate(views):
        ids, labels = view.token_ids(), expected_labels(view)
        prepared = prepare(ids, labels, seq_len, policy, documents[doc_id].turn_starts)
        n = len(ids)
        if n <= seq_len:
            assert prepared.outcome == "kept"
            assert prepared.spans == [(0, n)]
        else:
            assert prepared.outcome == {"drop": "dropped", "truncate": "truncated", "split": "split"}[policy]
        outcomes[prepared.outcome] += 1
        for start, end in prepared.spans:
            assert 0 <= start < end <= n
            assert end - start <= seq_len
            expected[(doc_id, tuple(ids[start:end]), tuple(labels[start:end]))] += 1
        if prepared.outcome == "split":
            starts = {0, *documents[doc_id].turn_starts}
            assert all(start in starts for start, _ in prepared.spans)  # pieces begin at turn boundaries
            assert [s for s, _ in prepared.spans] == sorted(s for s, _ in prepared.spans)
            if prepared.turns_truncated == 0:  # nothing lost: the pieces tile the document in order
                assert [t for s, e in prepared.spans for t in ids[s:e]] == ids

    got: Counter[tuple[int, tuple[int, ...], tuple[int, ...]]] = Counter()
    for s in sequences:
        assert s.seq_len == seq_len
        assert s.length == len(s.input_ids) == len(s.labels) == len(s.position_ids) <= seq_len
        assert s.cu_seqlens[0] == 0
        assert s.cu_seqlens[-1] == s.length
        assert all(a < b for a, b in zip(s.cu_seqlens, s.cu_seqlens[1:], strict=False))
        assert len(s.doc_ids) == len(s.cu_seqlens) - 1
        for k, doc_id in enumerate(s.doc_ids):
            start, end = s.cu_seqlens[k], s.cu_seqlens[k + 1]
            assert s.position_ids[start:end] == list(range(end - start))  # restart at every document
            assert s.labels[start] == IGNORE  # a header opens every piece: no loss across documents
            got[(doc_id, tuple(s.input_ids[start:end]), tuple(s.labels[start:end]))] += 1
    # every piece of every kept document exactly once, whole and in order, in exactly one sequence
    assert got == expected

    assert stats.documents_in == len(views)
    assert (stats.kept, stats.dropped, stats.truncated, stats.split, stats.empty) == (
        outcomes["kept"],
        outcomes["dropped"],
        outcomes["truncated"],
        outcomes["split"],
        outcomes["empty"],
    )
    assert stats.pieces == sum(expected.values())
    assert stats.sequences == len(sequences)
    assert (
        stats.real_tokens
        == sum(s.length for s in sequences)
        == sum(len(k[1]) * c for k, c in expected.items())
    )
    assert stats.slots == len(sequences) * seq_len
    assert stats.padding_tokens == sum(s.padding for s in sequences)
    assert stats.efficiency == (stats.real_tokens / stats.slots if stats.slots else 1.0)
    assert stats.lower_bound == math.ceil(stats.real_tokens / seq_len) <= stats.sequences
    kept_in = sum(len(v.token_ids()) for v in views)
    assert stats.tokens_in == kept_in
    assert stats.tokens_in - stats.tokens_cut == stats.real_tokens

    # deterministic: the same input gives the same sequences, byte for byte
    again, again_stats = pack(documents, seq_len, policy)
    assert msgspec.json.encode(again) == msgspec.json.encode(sequences)
    assert again_stats == stats
    return sequences


@pytest.mark.parametrize("template", ["chatml", "harmony"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    examples=st.lists(conversations(), min_size=1, max_size=8),
    seq_len=st.integers(24, 160),
    policy=st.sampled_from(POLICIES),
)
def test_packing_random_conversations(
    template: str, examples: list[ChatExample], seq_len: int, policy: Oversize
) -> None:
    t = get_template(template)
    check_packing([build_view(e, t) for e in examples], seq_len, policy)


@pytest.mark.parametrize("template", ["chatml", "harmony"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seq_len", [256, 1024, 4096])
def test_packing_real_conversations(template: str, policy: Oversize, seq_len: int) -> None:
    t = get_template(template)
    views = [build_view(msgspec.convert(c, ChatExample), t) for c in mtbench_conversations()]
    sequences = check_packing(views, seq_len, policy)
    assert sequences
    if seq_len == 4096:  # MT-Bench conversations all fit: nothing is cut
        assert sum(len(s.doc_ids) for s in sequences) == len(views)


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), max_size=80), extra=st.integers(0, 40))
def test_best_fit_decreasing_properties(lengths: list[int], extra: int) -> None:
    seq_len = max(lengths, default=1) + extra
    bins = best_fit_decreasing(lengths, seq_len)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each document exactly once
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(0 < load <= seq_len for load in loads)
    assert len(bins) >= math.ceil(sum(lengths) / seq_len)  # the lower bound holds for any packing
    # best fit never opens a sequence while one could take the document, so no two sequences could merge
    assert all(a + b > seq_len for i, a in enumerate(loads) for b in loads[i + 1 :])
    assert len(bins) <= max(1, math.ceil(2 * sum(lengths) / seq_len))
    assert bins == reference_bfd(lengths, seq_len)  # exactly best-fit-decreasing, tie rules included
    assert best_fit_decreasing(lengths, seq_len) == bins  # deterministic
    # first-fit-decreasing obeys the same bounds; neither always beats the other (see below)
    ffd = first_fit_decreasing(lengths, seq_len)
    assert sorted(i for b in ffd for i in b) == list(range(len(lengths)))
    assert len(ffd) >= math.ceil(sum(lengths) / seq_len)


def test_best_fit_is_not_always_at_most_first_fit() -> None:
    """BFD <= FFD is not a theorem: each can beat the other (so the suite does not assert it)."""
    bfd_worse = [30, 28, 22, 17, 14, 13, 9, 5, 3, 3, 3]
    assert (len(best_fit_decreasing(bfd_worse, 30)), len(first_fit_decreasing(bfd_worse, 30))) == (6, 5)
    ffd_worse = [29, 28, 24, 23, 19, 15, 13, 12, 12, 11, 6, 6, 4, 3]
    assert (len(best_fit_decreasing(ffd_worse, 30)), len(first_fit_decreasing(ffd_worse, 30))) == (7, 8)


def test_best_fit_decreasing_order_and_ties() -> None:
    # decreasing length, ties by index; 3 goes to the fullest sequence that fits (room 3), not the first
    assert best_fit_decreasing([5, 7, 3, 5, 5], 10) == [[1, 2], [0, 3], [4]]
    assert best_fit_decreasing([], 10) == []
    assert best_fit_decreasing([10, 10], 10) == [[0], [1]]


@pytest.mark.parametrize(("lengths", "seq_len"), [([0], 4), ([5], 4), ([-1], 4), ([1], 0)])
def test_best_fit_decreasing_rejects_bad_lengths(lengths: list[int], seq_len: int) -> None:
    with pytest.raises(ValueError, match=r"length|seq_len"):
        best_fit_decreasing(lengths, seq_len)


def test_best_fit_decreasing_is_near_optimal_at_scale() -> None:
    import random

    rng = random.Random(7)
    lengths = [min(4096, max(1, round(rng.lognormvariate(5.7, 1.0)))) for _ in range(50_000)]
    bins = best_fit_decreasing(lengths, 4096)
    lower = math.ceil(sum(lengths) / 4096)
    assert lower <= len(bins) <= lower + 5
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))


def test_prepare_policies() -> None:
    ids = list(range(10))
    labels = [IGNORE] * 3 + ids[3:]
    turns = [3, 5, 9]  # turns [0,3) [3,5) [5,9) [9,10)
    kept = prepare(ids, labels, 10, "drop", turns)
    assert (kept.outcome, kept.spans, kept.tokens_cut) == ("kept", [(0, 10)], 0)
    dropped = prepare(ids, labels, 6, "drop", turns)
    assert (dropped.outcome, dropped.pieces, dropped.tokens_cut) == ("dropped", [], 10)
    truncated = prepare(ids, labels, 6, "truncate", turns)
    assert (truncated.outcome, truncated.pieces, truncated.tokens_cut) == (
        "truncated",
        [(ids[:6], labels[:6])],
        4,
    )
    split = prepare(ids, labels, 6, "split", turns)
    assert (split.outcome, split.spans, split.tokens_cut, split.turns_truncated) == (
        "split",
        [(0, 5), (5, 10)],
        0,
        0,
    )
    assert split.pieces == [(ids[:5], labels[:5]), (ids[5:], labels[5:])]
    # a turn longer than seq_len alone keeps its head; the next piece starts at the next turn
    long_turn = prepare(ids, labels, 3, "split", turns)
    assert long_turn.spans == [(0, 3), (3, 5), (5, 8), (9, 10)]
    assert (long_turn.tokens_cut, long_turn.turns_truncated) == (1, 1)
    # no turn boundaries at all: one turn, its head
    assert prepare(ids, labels, 4, "split").spans == [(0, 4)]
    assert prepare([], [], 4, "split").outcome == "empty"
    with pytest.raises(ValueError, match="labels"):
        prepare(ids, labels[:-1], 4, "split")
    with pytest.raises(ValueError, match="policy"):
        prepare(ids, labels, 4, "wrap")  # type: ignore[arg-type]


def test_pack_counts_every_outcome() -> None:
    docs = [
        Document(10, [1] * 4, [IGNORE] * 4, []),
        Document(11, [2] * 9, [IGNORE] * 9, [3, 6]),
        Document(12, [], [], []),
        Document(13, [3] * 7, [3] * 7, []),
    ]
    for policy, expect in [
        ("drop", (1, 2, 0, 0, 1, 1)),
        ("truncate", (1, 0, 2, 0, 1, 3)),
        ("split", (1, 0, 0, 2, 1, 4)),  # doc 11 in two pieces, doc 13 as its 6-token head
    ]:
        sequences, stats = pack(docs, 6, policy)  # type: ignore[arg-type]
        assert (stats.kept, stats.dropped, stats.truncated, stats.split, stats.empty, stats.pieces) == expect
        assert stats.documents_in == 4
        assert sum(len(s.doc_ids) for s in sequences) == stats.pieces
    _, split_stats = pack(docs, 6, "split")
    assert (split_stats.tokens_cut, split_stats.split_turns_truncated) == (1, 1)  # doc 13: one 7-token turn


def test_document_from_view_marks_turns_and_labels() -> None:
    view = build_view(
        chat(
            ("system", "be brief"),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "bye"),
            ("assistant", "ok"),
        ),
        get_template("chatml"),
    )
    ids, labels, turns = document_from_view(view)
    assert ids == view.token_ids()
    assert labels == expected_labels(view)
    offsets, starts = 0, []
    previous: int | None = None
    for k, segment in enumerate(view.segments):
        if k and segment.message_index != previous:
            starts.append(offsets)
        previous = segment.message_index
        offsets += len(segment.token_ids)
    assert turns == starts
    assert len(turns) == 4  # five messages, four boundaries
    assert all(labels[t] == IGNORE for t in [0, *turns])  # every turn opens with an untrained header
