"""Every problem code in the registry, reported on a minimal example, where it happens.

Each case feeds JSONL through `pipeline.run` with a good example first, so the 1-based `line`
of the bad example means something, and checks the code's line, message index, severity and
a message that names what is wrong. The policy tests check what each action does with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from service.core.encodings import get_encoding
from service.core.formats import Format
from service.core.models import ModelTable, load_table
from service.core.pipeline import (
    OutputExample,
    PolicyError,
    Processor,
    Recipe,
    Report,
    parse_policies,
    run,
)
from service.core.problems import CODES as ALL_CODES
from service.core.problems import Action, Problem, Severity
from tests.conftest import findings

MODEL = "tiny-test"
# The `template` codes are found only by rendering with a model profile: test_profile_codes.py
# reports each of them with real templates and tokenizers. The `target` codes are found only by
# converting for a training target: tests/targets/test_target_codes.py reports each of them.
CODES = {code: info for code, info in ALL_CODES.items() if info.layer not in ("template", "target")}


def s(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def u(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def a(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


SYS = s("You are terse.")
GOOD = {"messages": [SYS, u("What is 2+2?"), a("4.")]}
GOOD2 = {"messages": [SYS, u("Capital of France?"), a("Paris.")]}
PREF_GOOD = {
    "input": {"messages": [SYS, u("What is 2+2?")]},
    "preferred_output": [a("4.")],
    "non_preferred_output": [a("5.")],
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def table(tmp_path: Path, *, max_tokens: int = 65536, min_examples: int = 1) -> ModelTable:
    """A model table with one extra o200k model, `tiny-test`, with the given limits."""
    path = tmp_path / "models.toml"
    path.write_text(
        f'[models."{MODEL}"]\nencoding = "o200k_base"\nmax_tokens = {max_tokens}\n'
        f"min_examples = {min_examples}\n"
    )
    return load_table(path)


def lines_of(values: list[Any]) -> list[bytes]:
    """One JSONL line per value; `bytes` values are written as they are (e.g. broken JSON)."""
    return [(v if isinstance(v, bytes) else json.dumps(v).encode()) + b"\n" for v in values]


@dataclass(frozen=True)
class Case:
    code: str
    values: list[Any]
    line: int | None  # 1-based line the problem is reported on; None: about the file
    index: int | None  # 0-based message index; None: about the example or the file
    severity: Severity
    mentions: tuple[str, ...]  # what the message must name
    also: frozenset[str] = frozenset()  # other codes this example rightly reports too
    fmt: Format | None = None
    max_tokens: int = 65536
    min_examples: int = 1
    id: str = ""
    good_lines: tuple[int, ...] = field(default=(1,))

    @property
    def name(self) -> str:
        return self.id or self.code

    def run(self, tmp_path: Path, policies: dict[str, Action] | None = None) -> tuple[Report, list[int]]:
        """The report, and the lines of the examples written."""
        written: list[OutputExample] = []
        report = run(
            lines_of(self.values),
            Recipe(model=MODEL, format=self.fmt, policies=policies or {}),
            per_example=True,
            sink=written.append,
            table=table(tmp_path, max_tokens=self.max_tokens, min_examples=self.min_examples),
        )
        return report, [o.line for o in written]


TOOL_CALL_TURN = {"role": "assistant", "tool_calls": [CALL]}

CASES = [
    Case("invalid_json", [GOOD, b'{"messages": [}'], 2, None, "error", ("line 2", "not valid JSON")),
    Case("not_an_object", [GOOD, "just a string"], 2, None, "error", ("a string", "not an object")),
    Case(
        "missing_messages",
        [GOOD, {"conversation": [u("hi"), a("hello")]}],
        2,
        None,
        "error",
        ("missing", "'messages'"),
    ),
    Case(
        "invalid_messages",
        [GOOD, {"messages": "What is 2+2?"}],
        2,
        None,
        "error",
        ("`messages`", "a string", "non-empty list"),
    ),
    Case(
        "invalid_messages",
        [GOOD, {"messages": [SYS, "What is 2+2?", a("4.")]}],
        2,
        1,
        "error",
        ("message 1", "a string", "not an object"),
        id="invalid_messages-item",
    ),
    Case(
        "unknown_key",
        [GOOD, {**GOOD2, "metadata": {"source": "web"}}],
        2,
        None,
        "error",
        ("extra key", "'metadata'"),
    ),
    Case(
        "unknown_message_key",
        [GOOD, {"messages": [SYS, {**u("Capital of France?"), "lang": "en"}, a("Paris.")]}],
        2,
        1,
        "error",
        ("message 1", "extra key", "'lang'"),
    ),
    Case(
        "invalid_field",
        [GOOD, {"messages": [SYS, {**u("Capital of France?"), "name": 5}, a("Paris.")]}],
        2,
        1,
        "error",
        ("message 1", "`name`", "a number", "expected a string"),
    ),
    Case(
        "unknown_role",
        [GOOD, {"messages": [SYS, {"role": "robot", "content": "beep"}, u("hi"), a("Hello.")]}],
        2,
        1,
        "error",
        ("message 1", "unknown role", "'robot'"),
    ),
    Case(
        "missing_content",
        [GOOD, {"messages": [SYS, {"role": "user"}, a("Paris.")]}],
        2,
        1,
        "error",
        ("user message 1", "no content"),
    ),
    Case(
        "invalid_content",
        [GOOD, {"messages": [SYS, u("Draw a cat."), {"role": "assistant", "content": [IMAGE]}]}],
        2,
        2,
        "error",
        ("assistant message 2", "image", "only user messages"),
    ),
    Case(
        "invalid_weight",
        [GOOD, {"messages": [SYS, u("Capital of France?"), a("Paris.", weight=2)]}],
        2,
        2,
        "error",
        ("message 2", "weight 2", "0 or 1"),
    ),
    Case(
        "weight_on_non_assistant",
        [GOOD, {"messages": [SYS, {**u("Capital of France?"), "weight": 1}, a("Paris.")]}],
        2,
        1,
        "error",
        ("user message 1", "`weight`", "only assistant"),
    ),
    Case(
        "missing_tool_call_id",
        [GOOD, {"messages": [SYS, u("2+2?"), TOOL_CALL_TURN, {"role": "tool", "content": "4"}, a("4.")]}],
        2,
        3,
        "error",
        ("tool message 3", "`tool_call_id`"),
    ),
    Case(
        "too_many_images",
        [
            GOOD,
            {
                "messages": [
                    SYS,
                    {"role": "user", "content": [{"type": "text", "text": "Which is a cat?"}] + [IMAGE] * 11},
                    a("The third."),
                ]
            },
        ],
        2,
        None,
        "error",
        ("11 images", "at most 10"),
    ),
    Case(
        "special_token_text",
        [GOOD, {"messages": [SYS, u("Capital of France?"), a("Paris.<|endoftext|>")]}],
        2,
        2,
        "error",
        ("message 2", "<|endoftext|>"),
    ),
    Case(
        "invalid_preference",
        [PREF_GOOD, {**PREF_GOOD, "non_preferred_output": [u("No.")]}],
        2,
        None,
        "error",
        ("`non_preferred_output`", "exactly one assistant message"),
        fmt="preference",
    ),
    Case(
        "no_assistant_message",
        [GOOD, {"messages": [SYS, u("Capital of France?")]}],
        2,
        None,
        "error",
        ("no assistant message",),
    ),
    Case(
        "no_trainable_assistant",
        [GOOD, {"messages": [SYS, u("2+2?"), a("4.", weight=0), u("3+3?"), a("6.", weight=0)]}],
        2,
        None,
        "warning",
        ("weight 0", "nothing is trained"),
    ),
    Case(
        "consecutive_same_role",
        [GOOD, {"messages": [SYS, u("Capital of France?"), a("Paris."), a("Anything else?")]}],
        2,
        3,
        "warning",
        ("messages 2 and 3", "assistant"),
    ),
    Case(
        "assistant_first",
        [GOOD, {"messages": [SYS, a("How can I help?"), u("Capital of France?"), a("Paris.")]}],
        2,
        1,
        "warning",
        ("starts with the assistant", "message 1"),
    ),
    Case(
        "no_user_message",
        [GOOD, {"messages": [SYS, a("Paris.")]}],
        2,
        None,
        "warning",
        ("no user message",),
        also=frozenset({"assistant_first"}),
    ),
    Case(
        "no_system_message",
        [GOOD, {"messages": [u("Capital of France?"), a("Paris.")]}],
        2,
        None,
        "warning",
        ("no system message",),
    ),
    Case(
        "system_not_first",
        [GOOD, {"messages": [u("Capital of France?"), SYS, a("Paris.")]}],
        2,
        1,
        "warning",
        ("system message 1", "after other messages"),
    ),
    Case(
        "system_repeated",
        [GOOD, {"messages": [SYS, s("Answer in English."), u("Capital of France?"), a("Paris.")]}],
        2,
        1,
        "warning",
        ("message 1", "second system message"),
    ),
    Case(
        "trailing_non_assistant",
        [GOOD, {"messages": [SYS, u("Capital of France?"), a("Paris."), u("Thanks!")]}],
        2,
        3,
        "warning",
        ("message 3", "after the last assistant message"),
    ),
    Case(
        "trailing_non_assistant",
        [GOOD, {"messages": [SYS, u("Capital of France?"), a("Paris."), u("Thanks!"), u("Bye.")]}],
        2,
        3,
        "warning",
        ("messages 3..4", "after the last assistant message"),
        also=frozenset({"consecutive_same_role"}),
        id="trailing_non_assistant-two",
    ),
    Case(
        "empty_content",
        [GOOD, {"messages": [SYS, u("   "), a("Paris.")]}],
        2,
        1,
        "warning",
        ("user message 1", "empty"),
    ),
    Case(
        "unnormalized_text",
        [GOOD, {"messages": [SYS, u("Capital of France?  "), a("Paris.")]}],
        2,
        1,
        "warning",
        ("user message 1", "whitespace"),
    ),
    Case(
        "unnormalized_text",
        [GOOD, {"messages": [SYS, u("Spell cafe\u0301."), a("C-A-F-E.")]}],
        2,
        1,
        "warning",
        ("user message 1", "NFC"),
        id="unnormalized_text-nfc",
    ),
    Case(
        "role_marker_in_content",
        [GOOD, {"messages": [SYS, u("Capital of France?"), a("Paris.\n\nHuman: And of Spain?")]}],
        2,
        2,
        "warning",
        ("assistant message 2", "Human:", "another turn"),
    ),
    Case(
        "unmatched_tool_call_id",
        [
            GOOD,
            {
                "messages": [
                    SYS,
                    u("2+2?"),
                    TOOL_CALL_TURN,
                    {"role": "tool", "tool_call_id": "call_9", "content": "4"},
                    a("4."),
                ]
            },
        ],
        2,
        3,
        "error",
        ("tool message 3", "'call_9'"),
    ),
    Case(
        "over_token_limit",
        [
            GOOD,
            {
                "messages": [
                    SYS,
                    u(" ".join(["Tell me a story."] * 10)),
                    a("Once upon a time, there was a cat."),
                ]
            },
        ],
        2,
        None,
        "warning",
        ("limit of 50",),
        max_tokens=50,
    ),
    Case(
        "too_few_examples",
        [GOOD, GOOD2],
        None,
        None,
        "error",
        ("2 example(s)", "at least 3"),
        min_examples=3,
        good_lines=(1, 2),
    ),
    Case(
        "duplicate_example",
        [GOOD, GOOD2, GOOD],
        3,
        None,
        "warning",
        ("duplicates line 1",),
        good_lines=(1, 2),
    ),
]
FIRST_CASE = {c.code: c for c in reversed(CASES)}


def found(report: Report, code: str) -> list[Problem]:
    return [p for p in findings(report) if p.code == code]


def test_every_code_has_a_case() -> None:
    assert {c.code for c in CASES} == set(CODES)


def test_good_lines_alone_report_nothing(tmp_path: Path) -> None:
    """The control: without the bad example, none of the cases reports anything."""
    controls: list[tuple[Format | None, list[Any]]] = [(None, [GOOD, GOOD2]), ("preference", [PREF_GOOD])]
    for fmt, good in controls:
        report = run(lines_of(good), Recipe(model=MODEL, format=fmt), per_example=True, table=table(tmp_path))
        assert report.problems == []
        assert report.ok
        assert report.examples_out == len(good)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_code_is_reported(case: Case, tmp_path: Path) -> None:
    report, _ = case.run(tmp_path)
    hits = found(report, case.code)
    assert len(hits) == 1, report.problems_detail
    p = hits[0]
    assert (p.line, p.message_index, p.severity) == (case.line, case.index, case.severity)
    assert p.severity == CODES[case.code].severity
    for words in case.mentions:
        assert words in p.message
    # nothing else is wrong with the example (or the file) than what the case is about
    assert {q.code for q in findings(report)} == {case.code, *case.also}
    assert all(q.line == case.line for q in findings(report))


def _tokens(enc: tiktoken.Encoding, m: dict[str, Any]) -> tuple[int, int]:
    """(billed, trained) of a plain-text message, by the cookbook's rule, counted here."""
    body = len(enc.encode_ordinary(m["content"]))
    billed = 3 + len(enc.encode_ordinary(m["role"])) + body
    trained = body + 1 if m["role"] == "assistant" and m.get("weight", 1) != 0 else 0
    return billed, trained


def test_over_token_limit_states_the_truncation_loss(tmp_path: Path) -> None:
    limit = 50
    messages = [
        s("You are a helpful assistant."),
        u("What is the capital of France?"),
        a("The capital of France is Paris, a city on the Seine."),
        u("And of Germany?"),
        a("The capital of Germany is Berlin, its largest city."),
    ]
    report = run(
        lines_of([GOOD, {"messages": messages}]),
        Recipe(model=MODEL),
        per_example=True,
        table=table(tmp_path, max_tokens=limit),
    )
    [p] = found(report, "over_token_limit")
    assert (p.line, p.message_index, p.severity, p.action) == (2, None, "warning", "keep")

    # independently: lay the example out token by token (each message's trained tokens, its
    # content and end-of-turn token, are its last ones) and count trained tokens past the limit
    enc = get_encoding("o200k_base")  # the offline copy of the tiktoken file
    flags: list[bool] = []
    for m in messages:
        billed, trained = _tokens(enc, m)
        flags += [False] * (billed - trained) + [True] * trained
    billed_total = len(flags) + 3  # + the reply priming
    trained_total = sum(flags)
    lost = sum(flags[limit:])
    # the example must really cut into the last reply, not all or nothing of it
    last_trained = _tokens(enc, messages[-1])[1]
    assert 0 < lost < last_trained

    assert f"has {billed_total} tokens" in p.message
    assert f"limit of {limit}" in p.message
    said = re.search(r"would lose (\d+) of its (\d+) trained tokens", p.message)
    assert said is not None, p.message
    assert (int(said[1]), int(said[2])) == (lost, trained_total)


def test_too_few_examples_with_the_builtin_minimum() -> None:
    report = run(lines_of([GOOD, GOOD2]), Recipe(), per_example=True)
    [p] = found(report, "too_few_examples")
    assert (p.line, p.message_index, p.severity, p.action) == (None, None, "error", "fail")
    assert "2 example(s)" in p.message
    assert "at least 10" in p.message
    assert not report.ok


def test_duplicate_of_a_later_copy_names_the_first_line(tmp_path: Path) -> None:
    report, written = Case("duplicate_example", [GOOD2, GOOD, GOOD2, GOOD2], 3, None, "warning", ()).run(
        tmp_path
    )
    dups = found(report, "duplicate_example")
    assert [(p.line, p.message) for p in dups] == [
        (3, "the example duplicates line 1"),
        (4, "the example duplicates line 1"),
    ]
    assert written == [1, 2, 3, 4]  # warnings are kept by default


# ---------------------------------------------------------------------------------------------
# Policies

ERROR_CODES = sorted(c for c, info in CODES.items() if info.severity == "error")
EXAMPLE_ERROR_CODES = [c for c in ERROR_CODES if CODES[c].example_level]
DROPPABLE = sorted(c for c, info in CODES.items() if Action.DROP in info.actions)


@pytest.mark.parametrize("code", ERROR_CODES)
def test_error_code_fails_by_default(code: str, tmp_path: Path) -> None:
    case = FIRST_CASE[code]
    assert CODES[code].default == Action.FAIL
    report, written = case.run(tmp_path)
    assert not report.ok
    [p] = found(report, code)
    assert p.action == "fail"
    # it is this code that fails the build, nothing else
    assert {q.code for q in findings(report) if q.action == "fail"} == {code}
    if CODES[code].example_level:
        assert report.examples_failed == 1
        assert case.line not in written
        assert report.examples_detail is not None
        assert [d.status for d in report.examples_detail if d.line == case.line] == ["failed"]
    assert written == list(case.good_lines)


@pytest.mark.parametrize("code", DROPPABLE)
def test_drop_removes_the_example(code: str, tmp_path: Path) -> None:
    case = FIRST_CASE[code]
    report, written = case.run(tmp_path, {code: Action.DROP})
    [p] = found(report, code)
    assert p.action == "drop"
    assert report.ok
    assert written == list(case.good_lines)
    assert report.examples_out == len(case.good_lines)
    assert report.examples == len(case.values)
    assert (report.examples_dropped, report.examples_failed) == (1, 0)


def test_only_the_file_level_code_cannot_be_dropped() -> None:
    assert set(DROPPABLE) == {c for c, info in CODES.items() if info.example_level}
    with pytest.raises(PolicyError, match="too_few_examples"):
        parse_policies(["too_few_examples=drop"])


@pytest.mark.parametrize("code", EXAMPLE_ERROR_CODES)
def test_keep_is_refused_for_errors(code: str) -> None:
    with pytest.raises(PolicyError, match=code):
        parse_policies([f"{code}=keep"])
    with pytest.raises(PolicyError, match=code):
        Processor(Recipe(policies={code: Action.KEEP}))


def test_keep_is_allowed_for_the_file_level_error(tmp_path: Path) -> None:
    """too_few_examples is an error, but about the whole file: `keep` is its only alternative to fail."""
    case = FIRST_CASE["too_few_examples"]
    assert parse_policies(["too_few_examples=keep"]) == {"too_few_examples": Action.KEEP}
    report, written = case.run(tmp_path, {"too_few_examples": Action.KEEP})
    [p] = found(report, "too_few_examples")
    assert p.action == "keep"
    assert report.ok
    assert written == [1, 2]


@pytest.mark.parametrize("code", sorted(c for c, info in CODES.items() if info.severity == "warning"))
def test_warnings_are_kept_by_default(code: str, tmp_path: Path) -> None:
    case = FIRST_CASE[code]
    assert CODES[code].default == Action.KEEP
    report, written = case.run(tmp_path)
    [p] = found(report, code)
    assert p.action == "keep"
    assert report.ok
    assert case.line in written


def test_unknown_code_is_refused() -> None:
    with pytest.raises(PolicyError, match="unknown problem code 'no_such_code'"):
        parse_policies(["no_such_code=keep"])
    with pytest.raises(PolicyError, match="no_such_code"):
        Processor(Recipe(policies={"no_such_code": Action.KEEP}))


def test_unknown_action_is_refused() -> None:
    with pytest.raises(PolicyError, match="unknown action 'ignore'"):
        parse_policies(["empty_content=ignore"])


def test_policy_without_an_action_is_refused() -> None:
    with pytest.raises(PolicyError, match="not CODE=ACTION"):
        parse_policies(["empty_content"])


def test_fix_is_refused_for_codes_without_a_fix() -> None:
    with pytest.raises(PolicyError, match="invalid_json"):
        parse_policies(["invalid_json=fix"])
    assert parse_policies([" empty_content = fix "]) == {"empty_content": Action.FIX}


def test_no_system_fix_needs_a_prompt() -> None:
    with pytest.raises(PolicyError, match="system prompt"):
        Processor(Recipe(policies={"no_system_message": Action.FIX}))
