"""Browsing a stored dataset: its lines with their problems and outcome under a recipe, a page at a time.

A dataset's lines are numbered 1.. across its batches in push order, as a build numbers them
(`workers.sharded.plan_build`): deleting a batch moves the lines of later batches up. Every line
is processed by the same `pipeline.Processor` as `/v1/validate` and a build, so its problems,
their actions and the outcome are what validating the dataset's examples in one body reports.

Memory does not grow with the dataset: lines are read from the batch blobs as a stream, a page
holds at most `limit` examples, and a scan looks at no more than `budget` lines past its start.
The one finding that depends on earlier lines, `duplicate_example` (which names the first line
with the same content), is decided without remembering the whole prefix: the lines of the scan
are processed once to learn their content keys, the lines before the scan are streamed to find
the first occurrence of just those keys, and the scan is then processed again with what was
found. A page therefore costs one pass over the lines before it plus two over its own lines;
when the recipe rewrites nothing (no fix, no windows, no profile), a line's output is its
example, and the lines before are only decoded and hashed, a tenth of the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from service.core.conversation import ChatExample, Example, Message, text_of
from service.core.formats import Format, Record, decode_line
from service.core.models import ModelTable
from service.core.pipeline import Outcome, OutputExample, Processor, Recipe, content_key
from service.core.problems import Problem

OutcomeName = Literal["clean", "kept", "fixed", "dropped", "failed"]
OUTCOMES: tuple[OutcomeName, ...] = ("clean", "kept", "fixed", "dropped", "failed")
PREVIEW_CHARS = 160  # of an item's preview
SEARCH_MAX = 200  # characters of a text search


def outcome_name(outcome: Outcome) -> OutcomeName:
    """clean: no problem; kept: problems, written as given; fixed: fixes changed it and it is
    written; dropped / failed: a policy (or the model's limit) keeps it out of the file."""
    if outcome.status == "dropped":
        return "dropped"
    if outcome.status == "failed":
        return "failed"
    if outcome.changes:
        return "fixed"
    return "kept" if outcome.problems else "clean"


@dataclass(frozen=True)
class BatchSpan:
    """A batch as the dataset numbers it: its id, its blob and its number of lines."""

    id: str
    key: str
    examples: int


@dataclass
class Row:
    """One stored line: its dataset-wide line number, its batch and its canonical JSON."""

    line: int
    batch_id: str
    raw: bytes


ChunkOpener = Callable[[str], Iterable[bytes]]


class Lines:
    """The lines of a dataset's batches, streamed from their blobs (`open_chunks`, per key)."""

    def __init__(self, batches: list[BatchSpan], open_chunks: ChunkOpener) -> None:
        self.batches = batches
        self.open_chunks = open_chunks
        self.total = sum(b.examples for b in batches)

    def span(self, batch_id: str) -> tuple[int, int] | None:
        """The lines [first, end) of one batch; None when the dataset has no such batch."""
        first = 1
        for b in self.batches:
            if b.id == batch_id:
                return first, first + b.examples
            first += b.examples
        return None

    def rows(self, start: int, end: int) -> Iterator[Row]:
        """Lines [start, end), reading only the blobs of the batches they are in."""
        first = 1
        for b in self.batches:
            stop = first + b.examples
            if stop > start and first < end:
                for k, raw in enumerate(_split_lines(self.open_chunks(b.key)), first):
                    if k >= end or k >= stop:
                        break
                    if k >= start:
                        yield Row(k, b.id, raw)
            first = stop
            if first >= end:
                return


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Non-empty lines of a stream of chunks, each with its newline (as `read_records` reads them)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            if line:
                yield line + b"\n"
    if rest:
        yield rest + b"\n"


@dataclass
class Filters:
    """What a page keeps: every given filter must hold (all None: every line)."""

    code: str | None = None
    outcome: OutcomeName | None = None
    text: str | None = None  # a substring of some message's text, case-insensitive

    def keeps(self, item: Browsed) -> bool:
        if self.outcome is not None and item.outcome_name != self.outcome:
            return False
        if self.code is not None and all(p.code != self.code for p in item.outcome.problems):
            return False
        return self.text is None or contains_text(item.record.example, self.text)


def contains_text(example: Example | None, needle: str) -> bool:
    """Some message's text (string content, text and refusal parts) contains `needle`, ignoring case."""
    if example is None:
        return False
    wanted = needle.casefold()
    return any(wanted in text_of(m).casefold() for m in messages_of(example))


def messages_of(example: Example) -> list[Message]:
    if isinstance(example, ChatExample):
        return example.messages
    return [*example.input.messages, *example.preferred_output, *example.non_preferred_output]


def preview(example: Example | None, chars: int = PREVIEW_CHARS) -> str:
    """The start of the first user message's text (else the first message with text), on one line."""
    if example is None:
        return ""
    messages = messages_of(example)
    first = next((m for m in messages if m.role == "user" and text_of(m)), None)
    first = first or next((m for m in messages if text_of(m)), None)
    text = " ".join(text_of(first).split()) if first is not None else ""
    return text if len(text) <= chars else text[: chars - 1] + "…"


@dataclass
class Browsed:
    """One line and what the recipe makes of it."""

    line: int
    batch_id: str
    raw: bytes
    record: Record
    outcome: Outcome

    @property
    def outcome_name(self) -> OutcomeName:
        return outcome_name(self.outcome)

    @property
    def problems(self) -> list[Problem]:
        return self.outcome.problems

    @property
    def outputs(self) -> list[OutputExample]:
        return self.outcome.outputs


class _Undeduped(Processor):
    """Every output kept: what a line's outputs are before duplicates are decided."""

    def _dedupe(
        self, outputs: list[OutputExample], line: int, problems: list[Problem]
    ) -> tuple[list[OutputExample], bool]:
        return outputs, False


class Browser:
    """Pages of a dataset's lines under one recipe (see the module docstring)."""

    def __init__(self, lines: Lines, recipe: Recipe, fmt: Format, table: ModelTable | None = None) -> None:
        self.lines = lines
        self.recipe = recipe
        self.fmt = fmt
        self.table = table

    def record(self, row: Row) -> Record:
        """A fresh decode: processing sets its problems' actions."""
        return decode_line(row.raw, row.line, self.fmt)

    def scan(
        self, start: int, end: int, limit: int, budget: int, keeps: Callable[[Browsed], bool]
    ) -> tuple[list[Browsed], int | None]:
        """Up to `limit` lines of [start, end) that `keeps` keeps, looking at no more than `budget`
        lines; and the line to go on from (None when [start, end) is done)."""
        end = min(end, self.lines.total + 1)
        processor = Processor(self.recipe, self.table)
        probe = _Undeduped(self.recipe, self.table) if start > 1 else None
        found: list[Browsed] = []
        pos, chunk, looked = start, limit, 0  # a full page at once when every line is kept
        while pos < end and looked < budget:
            stop = pos + min(chunk, budget - looked, end - pos)
            if probe is not None:
                self._seed(processor.seen, probe, pos, stop, start)
            for row in self.lines.rows(pos, stop):
                record = self.record(row)
                item = Browsed(row.line, row.batch_id, row.raw, record, processor.process(record))
                looked += 1
                if keeps(item):
                    found.append(item)
                    if len(found) >= limit:
                        return found, row.line + 1 if row.line + 1 < end else None
            pos, chunk = stop, chunk * 2
        return found, pos if pos < end else None

    def _seed(self, seen: dict[bytes, int], probe: Processor, first: int, stop: int, start: int) -> None:
        """Put into `seen` the first line before `start` whose output has the content of an output
        of lines [first, stop): what the processor would have remembered had it read those lines.
        Only content keys are held (16 bytes an output), never the lines themselves."""
        keys = {k for row in self.lines.rows(first, stop) for k in self._keys(probe, row)} - seen.keys()
        if not keys:
            return
        fast = not probe.rewrites
        for row in self.lines.rows(1, start):
            if fast:  # the line's output, if any, is its example: process only those that match
                record = self.record(row)
                if record.example is None or content_key(record.example) not in keys:
                    continue
            for k in self._keys(probe, row):
                if k in keys:
                    seen.setdefault(k, row.line)

    def _keys(self, probe: Processor, row: Row) -> list[bytes]:
        return [content_key(o.example) for o in probe.process(self.record(row)).outputs]
