"""What a build shard hands to the finalize step: a compact, mergeable summary.

A shard processes a contiguous range of the dataset's lines and keeps, per written example,
only numbers and a 16-byte content key; problems and changes travel as they are. The finalize
step folds the shard summaries in shard order, so the merged report is the same whatever
order the shards finished in, and decides what needs the whole dataset (duplicates across
shards, the provider minimum) from these summaries alone, never from the raw data.
"""

from __future__ import annotations

import msgspec

from service.core.pipeline import FixEffect, Outcome, Summary, add_fix_effect, content_key
from service.core.problems import Change, Problem


class Row(msgspec.Struct, array_like=True):
    """One written example: where it came from, its content key and its token counts."""

    line: int
    window: int | None
    key: bytes
    billed: int
    trained: int
    messages: int
    sig: bytes | None = None  # MinHash signature, when the build looks for near duplicates


class ShardSummary(msgspec.Struct):
    index: int
    n: int = 0
    n_ok: int = 0
    n_dropped: int = 0
    n_failed: int = 0
    problems: list[Problem] = []
    changes: list[Change] = []
    rows: list[Row] = []
    fixed: FixEffect = msgspec.field(default_factory=lambda: FixEffect(0, 0, 0))
    images: int = 0
    format: str | None = None


def add_outcome(part: ShardSummary, outcome: Outcome) -> None:
    part.n += 1
    if outcome.status == "ok":
        part.n_ok += 1
    elif outcome.status == "dropped":
        part.n_dropped += 1
    else:
        part.n_failed += 1
    part.problems.extend(outcome.problems)
    part.changes.extend(outcome.changes)
    part.images += outcome.images
    add_fix_effect(part.fixed, outcome)
    for out in outcome.outputs:
        t = out.tokens
        part.rows.append(Row(out.line, out.window, content_key(out.example), t.billed, t.trained, t.messages))


def merge(summary: Summary, part: ShardSummary, kept: list[Row]) -> None:
    """Fold one shard into `summary`; `kept` are the shard's rows that stay after global dedupe."""
    summary.n += part.n
    summary.n_ok += part.n_ok
    summary.n_dropped += part.n_dropped
    summary.n_failed += part.n_failed
    summary.add_problems(part.problems)
    summary.changes.extend(part.changes)
    summary.fixes.update(c.kind for c in part.changes)
    summary.images += part.images
    summary.fixed.examples += part.fixed.examples
    summary.fixed.trained_before += part.fixed.trained_before
    summary.fixed.trained_after += part.fixed.trained_after
    summary.format = summary.format or part.format
    for row in kept:
        summary.billed.append(row.billed)
        summary.trained.append(row.trained)
        summary.messages.append(row.messages)


encode = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(ShardSummary)


def decode(data: bytes) -> ShardSummary:
    return _decoder.decode(data)
