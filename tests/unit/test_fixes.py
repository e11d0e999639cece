"""Every fix, through the pipeline: exactly what it changed, where, and what it did to trained tokens.

Each test writes a good example on line 1 and the one to fix on line 2, runs the pipeline with
the fix's policy, and compares the written examples with the full expected result, the report's
`changes` with the expected (kind, code, line, message_index), and the report's trained tokens
before and after fixes with counts made here on the original and on the expected result.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.core.accounting import Accountant
from service.core.conversation import ChatExample, Message
from service.core.lint import lint as check_structure
from service.core.models import ModelTable, load_table
from service.core.pipeline import OutputExample, PolicyError, Processor, Recipe, Report, run
from service.core.problems import Action
from tests.conftest import findings

ACCOUNTANT = Accountant.for_model(load_table().resolve("gpt-4o-mini"))


def s(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def u(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def a(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


SYS = s("You are terse.")
GOOD = {"messages": [SYS, u("What is 2+2?"), a("4.")]}


def example(value: dict[str, Any]) -> ChatExample:
    return msgspec.convert(value, ChatExample)


def trained(value: dict[str, Any]) -> int:
    return ACCOUNTANT.chat(example(value)).trained


def billed(value: dict[str, Any]) -> int:
    return ACCOUNTANT.chat(example(value)).billed


def trained_message(m: dict[str, Any]) -> int:
    return ACCOUNTANT.message(msgspec.convert(m, Message)).trained


def table(tmp_path: Path, *, max_tokens: int = 65536) -> ModelTable:
    """gpt-4o-mini as built in, but with a minimum of one example (and, if asked, a smaller limit)."""
    path = tmp_path / "models.toml"
    path.write_text(
        '[models."gpt-4o-mini-2024-07-18"]\nencoding = "o200k_base"\n'
        f"max_tokens = {max_tokens}\nmin_examples = 1\n"
    )
    return load_table(path)


@dataclass
class Fixed:
    report: Report
    written: dict[int, list[dict[str, Any]]]  # line -> the examples written for it, as JSON values

    def changes(self) -> list[tuple[str, str | None, int | None, int | None]]:
        return [(c.kind, c.code, c.line, c.message_index) for c in self.report.changes]

    def detail_trained(self, line: int) -> list[int]:
        assert self.report.examples_detail is not None
        return [d.trained_tokens for d in self.report.examples_detail if d.line == line]

    def action(self, code: str) -> list[str | None]:
        return [p.action for p in findings(self.report) if p.code == code]


def fix(bad: dict[str, Any], tmp_path: Path, *, max_tokens: int = 65536, **recipe: Any) -> Fixed:
    written: list[OutputExample] = []
    lines = [json.dumps(v).encode() + b"\n" for v in (GOOD, bad)]
    report = run(
        lines,
        Recipe(**recipe),
        per_example=True,
        sink=written.append,
        table=table(tmp_path, max_tokens=max_tokens),
    )
    out: dict[int, list[dict[str, Any]]] = {}
    for o in written:
        out.setdefault(o.line, []).append(msgspec.to_builtins(o.example))
    return Fixed(report, out)


def check_fixed(
    result: Fixed,
    before: dict[str, Any],
    after: dict[str, Any],
    changes: list[tuple[str, str | None, int | None, int | None]],
) -> None:
    """The example on line 2 became exactly `after`, by exactly `changes`; line 1 is untouched."""
    assert result.written == {1: [GOOD], 2: [after]}
    assert result.changes() == changes
    assert result.report.ok
    fixed = result.report.fix_effect
    assert (fixed.examples, fixed.trained_before, fixed.trained_after) == (1, trained(before), trained(after))
    assert result.report.tokens.trained_total == trained(GOOD) + trained(after)
    assert result.detail_trained(2) == [trained(after)]


def test_merge_consecutive_same_role(tmp_path: Path) -> None:
    before = {
        "messages": [
            SYS,
            u("Capital of France?"),
            u("Answer in one word."),
            a("Paris."),
            a("It is on the Seine."),
        ]
    }
    after = {
        "messages": [
            SYS,
            u("Capital of France?\n\nAnswer in one word."),
            a("Paris.\n\nIt is on the Seine."),
        ]
    }
    r = fix(before, tmp_path, policies={"consecutive_same_role": Action.FIX})
    assert r.action("consecutive_same_role") == ["fix", "fix"]
    check_fixed(
        r,
        before,
        after,
        [
            ("merge_consecutive", "consecutive_same_role", 2, 2),
            ("merge_consecutive", "consecutive_same_role", 2, 4),
        ],
    )


def test_merged_assistant_turn_is_trained_if_any_part_was(tmp_path: Path) -> None:
    before = {
        "messages": [
            SYS,
            u("2+2?"),
            a("Let me think.", weight=0),
            a("Still thinking.", weight=0),
            u("3+3?"),
            a("Hmm.", weight=0),
            a("6."),
        ]
    }
    after = {
        "messages": [
            SYS,
            u("2+2?"),
            a("Let me think.\n\nStill thinking.", weight=0),
            u("3+3?"),
            a("Hmm.\n\n6."),
        ]
    }
    r = fix(before, tmp_path, policies={"consecutive_same_role": Action.FIX})
    check_fixed(
        r,
        before,
        after,
        [
            ("merge_consecutive", "consecutive_same_role", 2, 3),
            ("merge_consecutive", "consecutive_same_role", 2, 6),
        ],
    )
    # the untrained first turn stays untrained; the second trains both halves now
    assert trained(after) == trained_message(a("Hmm.\n\n6."))
    assert trained(before) == trained_message(a("6."))


def test_drop_trailing_non_assistant(tmp_path: Path) -> None:
    before = {"messages": [SYS, u("Capital of France?"), a("Paris."), u("Thanks!"), u("Bye.")]}
    after = {"messages": [SYS, u("Capital of France?"), a("Paris.")]}
    r = fix(before, tmp_path, policies={"trailing_non_assistant": Action.FIX})
    check_fixed(
        r,
        before,
        after,
        [
            ("drop_trailing", "trailing_non_assistant", 2, 3),
            ("drop_trailing", "trailing_non_assistant", 2, 4),
        ],
    )
    assert trained(after) == trained(before)  # they were billed, never trained
    assert billed(after) < billed(before)


def test_insert_system_prompt(tmp_path: Path) -> None:
    before = {"messages": [u("Capital of France?"), a("Paris.")]}
    after = {"messages": [s("Answer in one word."), u("Capital of France?"), a("Paris.")]}
    r = fix(
        before,
        tmp_path,
        policies={"no_system_message": Action.FIX},
        system_prompt="Answer in one word.",
    )
    # the inserted message has no index in the example as sent
    check_fixed(r, before, after, [("insert_system_prompt", "no_system_message", 2, None)])
    assert "19 characters" in r.report.changes[0].detail
    assert trained(after) == trained(before)


def test_insert_system_prompt_needs_a_prompt() -> None:
    with pytest.raises(PolicyError, match="system prompt"):
        Processor(Recipe(policies={"no_system_message": Action.FIX}))


def test_train_only_the_last_assistant_turn(tmp_path: Path) -> None:
    before = {
        "messages": [
            SYS,
            u("2+2?"),
            a("4.", weight=0),
            u("3+3?"),
            a("6."),
            u("4+4?"),
            a("8."),
        ]
    }
    after = {
        "messages": [
            SYS,
            u("2+2?"),
            a("4.", weight=0),
            u("3+3?"),
            a("6.", weight=0),
            u("4+4?"),
            a("8."),
        ]
    }
    r = fix(before, tmp_path, train_on="last")
    # message 2 already had weight 0: only message 4 changes; line 1 has a single turn
    check_fixed(r, before, after, [("train_last_only", None, 2, 4)])
    assert trained(after) == trained_message(a("8."))
    assert trained(before) == trained_message(a("6.")) + trained_message(a("8."))


def test_normalize_text(tmp_path: Path) -> None:
    before = {"messages": [SYS, u("  Spell cafe\u0301.  "), a("C-A-F-E\u0301.\n")]}
    after = {"messages": [SYS, u("Spell caf\u00e9."), a("C-A-F-\u00c9.")]}
    r = fix(before, tmp_path, policies={"unnormalized_text": Action.FIX})
    check_fixed(
        r,
        before,
        after,
        [("normalize_text", "unnormalized_text", 2, 1), ("normalize_text", "unnormalized_text", 2, 2)],
    )
    assert trained(after) == trained_message(a("C-A-F-\u00c9."))


def test_drop_empty_messages(tmp_path: Path) -> None:
    before = {"messages": [SYS, u("Capital of France?"), a(""), u("   "), u("Please answer."), a("Paris.")]}
    after = {"messages": [SYS, u("Capital of France?"), u("Please answer."), a("Paris.")]}
    r = fix(before, tmp_path, policies={"empty_content": Action.FIX})
    check_fixed(
        r,
        before,
        after,
        [("drop_empty_message", "empty_content", 2, 2), ("drop_empty_message", "empty_content", 2, 3)],
    )
    # the empty assistant turn trained only its end-of-turn token
    assert trained(after) == trained(before) - 1


def test_move_system_first(tmp_path: Path) -> None:
    before = {"messages": [u("Capital of France?"), SYS, a("Paris.")]}
    after = {"messages": [SYS, u("Capital of France?"), a("Paris.")]}
    r = fix(before, tmp_path, policies={"system_not_first": Action.FIX})
    check_fixed(r, before, after, [("move_system_first", "system_not_first", 2, 1)])
    assert trained(after) == trained(before)


def test_drop_leading_assistant(tmp_path: Path) -> None:
    before = {"messages": [SYS, a("How can I help?"), u("Capital of France?"), a("Paris.")]}
    after = {"messages": [SYS, u("Capital of France?"), a("Paris.")]}
    r = fix(before, tmp_path, policies={"assistant_first": Action.FIX})
    check_fixed(r, before, after, [("drop_leading_assistant", "assistant_first", 2, 1)])
    assert trained(after) == trained(before) - trained_message(a("How can I help?"))


def test_remove_weight_on_non_assistant(tmp_path: Path) -> None:
    before = {"messages": [SYS, u("Capital of France?", weight=0), a("Paris.")]}
    after = {"messages": [SYS, u("Capital of France?"), a("Paris.")]}
    r = fix(before, tmp_path, policies={"weight_on_non_assistant": Action.FIX})
    assert r.action("weight_on_non_assistant") == ["fix"]
    check_fixed(r, before, after, [("remove_weight", "weight_on_non_assistant", 2, 1)])
    assert trained(after) == trained(before)


def test_remove_special_token_text(tmp_path: Path) -> None:
    before = {"messages": [SYS, u("Say <|endoftext|> twice."), a("Done.<|endoftext|>")]}
    after = {"messages": [SYS, u("Say  twice."), a("Done.")]}
    r = fix(before, tmp_path, policies={"special_token_text": Action.FIX})
    assert r.action("special_token_text") == ["fix", "fix"]
    check_fixed(
        r,
        before,
        after,
        [
            ("remove_special_tokens", "special_token_text", 2, 1),
            ("remove_special_tokens", "special_token_text", 2, 2),
        ],
    )
    assert all("<|endoftext|>" in c.detail for c in r.report.changes)
    assert trained(after) == trained_message(a("Done."))
    assert trained(before) > trained(after)


def test_remove_unknown_keys(tmp_path: Path) -> None:
    before = {
        "messages": [SYS, u("Capital of France?", lang="en"), a("Paris.")],
        "metadata": {"source": "web"},
    }
    after = {"messages": [SYS, u("Capital of France?"), a("Paris.")]}
    r = fix(
        before,
        tmp_path,
        policies={"unknown_key": Action.FIX, "unknown_message_key": Action.FIX},
    )
    assert r.written == {1: [GOOD], 2: [after]}
    assert r.changes() == [
        ("remove_unknown_key", "unknown_key", 2, None),
        ("remove_unknown_key", "unknown_message_key", 2, 1),
    ]
    details = [c.detail for c in r.report.changes]
    assert "'metadata'" in details[0]
    assert "'lang'" in details[1]
    assert all(d.startswith("removed the key") for d in details)
    assert r.report.ok
    # the unknown keys were never counted, so trained tokens are those of the cleaned example
    assert r.report.fix_effect.trained_before == r.report.fix_effect.trained_after == trained(after)
    assert r.report.tokens.trained_total == trained(GOOD) + trained(after)


def test_change_indices_refer_to_the_input_when_fixes_combine(tmp_path: Path) -> None:
    before = {"messages": [SYS, u(""), u("Capital of France?"), u("One word."), a("Paris.")]}
    after = {"messages": [SYS, u("Capital of France?\n\nOne word."), a("Paris.")]}
    r = fix(
        before,
        tmp_path,
        policies={"empty_content": Action.FIX, "consecutive_same_role": Action.FIX},
    )
    assert r.written == {1: [GOOD], 2: [after]}
    problems = [(p.code, p.message_index) for p in findings(r.report)]
    assert problems == [("empty_content", 1), ("consecutive_same_role", 2), ("consecutive_same_role", 3)]
    # message 1 (empty) is dropped; message 3 ("One word.") is merged into message 2
    assert r.changes() == [
        ("drop_empty_message", "empty_content", 2, 1),
        ("merge_consecutive", "consecutive_same_role", 2, 3),
    ]


PREF = {
    "input": {"messages": [SYS, u("What is 2+2?")]},
    "preferred_output": [a("4.")],
    "non_preferred_output": [a("5.")],
}


def test_special_token_fix_reaches_the_preferred_output(tmp_path: Path) -> None:
    before = {**PREF, "preferred_output": [a("4.<|endoftext|>")], "non_preferred_output": [a("6.")]}
    after = {**PREF, "non_preferred_output": [a("6.")]}
    written: list[OutputExample] = []
    report = run(
        [json.dumps(v).encode() + b"\n" for v in (PREF, before)],
        Recipe(format="preference", policies={"special_token_text": Action.FIX}),
        per_example=True,
        sink=written.append,
        table=table(tmp_path),
    )
    [p] = findings(report)
    assert (p.code, p.line, p.message_index, p.action) == ("special_token_text", 2, 2, "fix")
    assert [msgspec.to_builtins(o.example) for o in written] == [PREF, after]
    assert [(c.kind, c.line, c.message_index) for c in report.changes] == [("remove_special_tokens", 2, 2)]


# ---------------------------------------------------------------------------------------------
# Splitting an over-long conversation into windows

LONG = {
    "messages": [
        s("You are a concise assistant who answers questions about colors."),
        u("Name a primary color, please."),
        a("Red is a primary color in the traditional model."),
        u("Name another primary color for me."),
        a("Blue is another primary color, often seen as calm.", weight=0),
        u("And what would the third one be?"),
        a("Yellow completes the traditional set of three primaries."),
        u("Which of the three is considered the warmest?"),
        a("Red is usually considered the warmest of the three."),
        u("And which one is the coolest of them?"),
        a("Blue is usually considered the coolest of the three."),
    ]
}


def _windows(limit: int, tmp_path: Path, value: dict[str, Any] = LONG) -> tuple[Fixed, list[dict[str, Any]]]:
    r = fix(value, tmp_path, max_tokens=limit, policies={"over_token_limit": Action.FIX})
    assert r.written[1] == [GOOD]
    return r, r.written[2]


def _cost(*messages: dict[str, Any]) -> int:
    """Billed tokens of a window of LONG holding these messages after its system prompt."""
    return billed({"messages": [LONG["messages"][0], *messages]})


def _errors_and_assistant_first(window: dict[str, Any]) -> list[str]:
    """What the structure check says is wrong with a window that would not be wrong with its source."""
    found = check_structure(example(window), None)
    return [p.code for p in found if p.severity == "error" or p.code == "assistant_first"]


@pytest.mark.parametrize("limit", [75, 90, 110])
def test_split_into_windows(limit: int, tmp_path: Path) -> None:
    original = LONG["messages"]
    system, rest = original[0], original[1:]
    contents = [m["content"] for m in rest]
    assert len(set(contents)) == len(contents)  # each message is recognised by its text
    trained_turns = [m["content"] for m in rest if m["role"] == "assistant" and m.get("weight") != 0]
    # preconditions: the example is over the limit, yet the messages from one trained turn to the
    # next (the new turns each window must hold) always fit, so nothing needs to be left out
    assert billed(LONG) > limit
    ends = [i for i, m in enumerate(rest) if m["content"] in trained_turns]
    for start, end in zip([0, *[e + 1 for e in ends]], ends, strict=False):
        assert _cost(*rest[start : end + 1]) <= limit

    r, windows = _windows(limit, tmp_path)
    assert len(windows) >= 2
    seen: set[str] = set()
    trained_in: list[str] = []
    for w in windows:
        assert billed(w) <= limit
        assert w["messages"][0] == system  # the system prompt is in every window
        body = w["messages"][1:]
        # a contiguous run of the original messages, each unchanged but for a weight of 0
        start = contents.index(body[0]["content"])
        assert [m["content"] for m in body] == contents[start : start + len(body)]
        for m, o in zip(body, rest[start : start + len(body)], strict=True):
            assert m in (o, {**o, "weight": 0})
        assert body[0]["role"] == "user"  # context starts on a user turn
        assert body[-1]["role"] == "assistant"  # and the window ends on a turn it trains
        assert body[-1].get("weight") != 0
        assert _errors_and_assistant_first(w) == []
        for m in body:
            if m["role"] == "assistant" and m.get("weight") != 0:
                trained_in.append(m["content"])
            # context (what an earlier window already held) is never trained again
            if m["role"] == "assistant" and m["content"] in seen:
                assert m.get("weight") == 0
        seen.update(m["content"] for m in body)
    # every originally trained turn is trained in exactly one window, in order; nothing else is
    assert trained_in == trained_turns
    assert Counter(trained_in) == Counter(trained_turns)
    assert seen == set(contents)  # no message is lost
    # so the trained tokens add up exactly: each trained turn (its text and its end-of-turn
    # token) counts once, and context turns count nothing
    assert sum(trained(w) for w in windows) == trained(LONG)

    report = r.report
    assert r.changes() == [("split_windows", "over_token_limit", 2, None)]
    assert f"split into {len(windows)} windows" in report.changes[0].detail
    assert r.action("over_token_limit") == ["fix"]
    assert report.ok
    assert report.examples_out == 1 + len(windows)
    assert (report.fix_effect.trained_before, report.fix_effect.trained_after) == (
        trained(LONG),
        trained(LONG),
    )
    assert report.tokens.trained_total == trained(GOOD) + trained(LONG)
    assert r.detail_trained(2) == [trained(w) for w in windows]
    assert report.examples_detail is not None
    assert [d.window for d in report.examples_detail if d.line == 2] == list(range(len(windows)))


def _split(*bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"messages": [LONG["messages"][0], *body]} for body in bodies]


def test_split_windows_exactly(tmp_path: Path) -> None:
    """At 75 tokens: as many new turns as fit, then as much earlier context as fits."""
    _, u1, a1, u2, a2, u3, a3, u4, a4, u5, a5 = LONG["messages"]
    limit = 75
    # window 1 holds the first exchange; the next trained turn (a3) does not fit with it
    assert _cost(u1, a1) <= limit < _cost(u1, a1, u2, a2, u3, a3)
    # window 2: the new turns up to a3 fit, a4 does not join them, nor does a1 as context
    assert _cost(u2, a2, u3, a3) <= limit < min(_cost(u2, a2, u3, a3, u4, a4), _cost(a1, u2, a2, u3, a3))
    # window 3: both remaining exchanges fit together, without a3 as context
    assert _cost(u4, a4, u5, a5) <= limit < _cost(a3, u4, a4, u5, a5)

    _, windows = _windows(limit, tmp_path)
    assert windows == _split([u1, a1], [u2, a2, u3, a3], [u4, a4, u5, a5])


def test_split_windows_start_on_a_user_turn_when_new_turns_do_not_fit(tmp_path: Path) -> None:
    _, u1, a1, u2, a2, u3, a3, u4, a4, u5, a5 = LONG["messages"]
    limit = 60
    assert _cost(u1, a1) <= limit < _cost(u1, a1, u2, a2, u3, a3)
    # the new turns before a3 do not fit: u2 must go, and so a2 (untrained) with it, or the window
    # would start on an assistant turn; the exchange u3, a3 fits
    assert _cost(u3, a3) <= _cost(a2, u3, a3) <= limit < _cost(u2, a2, u3, a3)
    assert _cost(u4, a4) <= limit < min(_cost(u4, a4, u5, a5), _cost(a3, u4, a4))
    assert _cost(u5, a5) <= limit < _cost(u4, a4, u5, a5)

    _, windows = _windows(limit, tmp_path)
    assert [_errors_and_assistant_first(w) for w in windows] == [[]] * 4
    assert windows == _split([u1, a1], [u3, a3], [u4, a4], [u5, a5])


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
WITH_TOOLS = {
    "messages": [
        SYS,
        u("What is 1+1?"),
        a("2."),
        u("Please use the calculator tool to add two and two, then tell me the result in a short sentence."),
        {"role": "assistant", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        a("The sum is 4."),
    ]
}


def test_split_windows_keep_a_tool_result_with_its_call(tmp_path: Path) -> None:
    sys_, _u1, _a1, u2, call, result, final = WITH_TOOLS["messages"]

    def cost(*messages: dict[str, Any]) -> int:
        return billed({"messages": [sys_, *messages]})

    limit = 72
    # the last window can hold the call with its result and the answer, but not the prompt too
    assert cost(call, result, final) <= limit < cost(u2, call, result, final)
    _, windows = _windows(limit, tmp_path, WITH_TOOLS)
    assert billed(WITH_TOOLS) > limit
    # every window is as valid as the source: no tool result without the call it answers
    assert [
        [p.code for p in check_structure(example(w), None) if p.severity == "error"] for w in windows
    ] == [[]] * len(windows)
    assert sum(trained(w) for w in windows) == trained(WITH_TOOLS)


def test_fixed_examples_are_checked_again(tmp_path: Path) -> None:
    """A fix can leave an example the provider rejects; the recheck reports it and nothing is written."""
    before = {"messages": [SYS, a("Hello!"), u("Bye")]}  # assistant first, then a trailing user turn
    r = fix(before, tmp_path, policies={"assistant_first": Action.FIX, "trailing_non_assistant": Action.FIX})
    assert 2 not in r.written
    after = [p for p in findings(r.report) if p.line == 2 and p.message.startswith("after fixes")]
    assert [(p.code, p.action) for p in after] == [("no_assistant_message", "fail")]
    assert not r.report.ok


def test_a_fix_that_empties_a_turn_is_followed_by_the_empty_fix(tmp_path: Path) -> None:
    before = {"messages": [SYS, u("Say it."), a("<|endoftext|>"), u("Again?"), a("Done.")]}
    after = {"messages": [SYS, u("Say it.\n\nAgain?"), a("Done.")]}
    r = fix(
        before,
        tmp_path,
        policies={
            "special_token_text": Action.FIX,
            "empty_content": Action.FIX,
            "consecutive_same_role": Action.FIX,
        },
    )
    assert r.written == {1: [GOOD], 2: [after]}
    assert [c[0] for c in r.changes()] == ["remove_special_tokens", "drop_empty_message", "merge_consecutive"]
    assert [c[3] for c in r.changes()] == [2, 2, 3]  # indices of the example as sent
