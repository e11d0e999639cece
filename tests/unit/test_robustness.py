"""No input crashes the pipeline: arbitrary JSON and bytes become problems, never exceptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.formats import FORMATS, parse_format
from service.core.pipeline import Recipe, run
from service.core.problems import CODES
from tests.conftest import findings

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
keys = st.sampled_from(
    [
        "messages",
        "role",
        "content",
        "weight",
        "name",
        "tool_calls",
        "tool_call_id",
        "type",
        "text",
        "image_url",
        "function",
        "arguments",
        "id",
        "tools",
        "input",
        "preferred_output",
        "non_preferred_output",
        "conversations",
        "from",
        "value",
        "chosen",
        "rejected",
        "instruction",
        "output",
        "prompt",
        "completion",
        "extra",
    ]
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "function", "developer", "", "gpt", "human"])
json_values = st.recursive(
    st.one_of(scalars, roles),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


@st.composite
def messy_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed messages with one thing wrong, so deeper layers are reached too."""
    messages = []
    for _ in range(draw(st.integers(0, 5))):
        m: dict[str, Any] = {
            "role": draw(roles),
            "content": draw(st.one_of(st.text(max_size=10), json_values)),
        }
        if draw(st.booleans()):
            m[draw(keys)] = draw(json_values)
        messages.append(m)
    return {"messages": messages, **draw(st.dictionaries(keys, json_values, max_size=2))}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.one_of(json_values, messy_messages()), min_size=1, max_size=4),
    fmt=st.sampled_from([None, *FORMATS]),
)
def test_any_json_is_reported_never_raised(values: list[Any], fmt: str | None) -> None:
    lines = [json.dumps(v).encode() + b"\n" for v in values]
    report = run(lines, Recipe(format=parse_format(fmt)), per_example=True)
    # a file of one line holding an array is a JSON array file: its items are the examples
    one_array = len(values) == 1 and isinstance(values[0], list)
    assert report.examples == (len(values[0]) if one_array else len(values))
    for p in findings(report):
        assert p.code in CODES
        assert p.message
    assert report.examples_out <= report.examples or any(c.kind == "split_windows" for c in report.changes)


@given(items=st.lists(st.one_of(json_values, messy_messages()), max_size=5))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_json_array_files_are_reported_never_raised(items: list[Any]) -> None:
    pretty = json.dumps(items, indent=1).encode().splitlines(keepends=True)
    report = run(pretty, Recipe(), per_example=True)
    assert report.examples == len(items)
    assert [d.line for d in report.examples_detail or [] if d.window in (None, 0)] == list(
        range(1, len(items) + 1)
    )


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_arbitrary_bytes_are_reported_never_raised(raw: list[bytes]) -> None:
    lines = [b.replace(b"\n", b" ") + b"\n" for b in raw]
    report = run(lines, Recipe(), per_example=True)
    assert report.examples <= len(lines)
    assert all(p.code in CODES for p in findings(report))


@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_json_after_a_shape_error_is_invalid_json(fmt: str) -> None:
    """msgspec's typed decode can fail on the shape before it sees the bad JSON: still invalid_json."""
    report = run(
        [b'{"messages": Infinity, "input": Infinity}\n'], Recipe(format=parse_format(fmt)), per_example=True
    )
    assert [p.code for p in findings(report) if p.line == 1] == ["invalid_json"]


@pytest.mark.parametrize("fmt", [None, *FORMATS])
def test_invalid_utf8_and_deep_nesting_are_invalid_json(fmt: str | None) -> None:
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    bad_utf8 = b'{"messages": [{"role": "user", "content": "\xff"}, {"role": "assistant", "content": "y"}]}\n'
    deep = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    report = run([good, bad_utf8, deep], Recipe(format=parse_format(fmt)), per_example=True)
    assert [(p.line, p.code) for p in findings(report) if p.line in (2, 3)] == [
        (2, "invalid_json"),
        (3, "invalid_json"),
    ]
    messages = [p.message for p in findings(report) if p.line in (2, 3)]
    assert "UTF-8" in messages[0]
    assert "deeply" in messages[1]


def test_a_json_array_with_invalid_utf8_or_deep_nesting_is_reported() -> None:
    bad = run([b'[{"prompt": "\xff", "completion": "b"}]'], Recipe(), per_example=True)
    assert [p.code for p in findings(bad) if p.line] == ["invalid_json"]
    deep = b"[" + b"[" * 5000 + b"]" * 5000 + b"]"
    assert [p.code for p in findings(run([deep], Recipe(), per_example=True)) if p.line] == ["invalid_json"]


def test_a_byte_order_mark_is_ignored(data_dir: Path) -> None:
    bom = b"\xef\xbb\xbf"
    array = (data_dir / "sharegpt_fastchat_dummy.json").read_bytes()
    report = run([bom + array], Recipe())
    assert (report.format, report.examples, report.examples_failed) == ("sharegpt", 500, 0)
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    report = run([bom + line, line.replace(b"yo", b"hey")], Recipe())
    assert report.examples_failed == 0


def test_the_format_is_detected_from_the_first_line_that_decodes() -> None:
    lines = [
        b"{not json\n",
        *[
            json.dumps(
                {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            ).encode()
            + b"\n"
            for i in range(3)
        ],
    ]
    report = run(lines, Recipe(), per_example=True)
    assert report.format == "sharegpt"
    assert [(p.line, p.code) for p in findings(report) if p.severity == "error" and p.line] == [
        (1, "invalid_json")
    ]


def test_policies_given_as_plain_strings_in_code() -> None:
    recipe = Recipe(policies={"consecutive_same_role": "fix"})  # type: ignore[dict-item]
    report = run(
        [
            b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}\n'
        ],
        recipe,
    )
    assert report.fixes == {"merge_consecutive": 1}


def test_special_token_text_in_tool_calls_is_flagged() -> None:
    line = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": "<|endoftext|>"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "ok"},
                {"role": "assistant", "content": "done"},
            ]
        }
    ).encode()
    found = [
        (p.code, p.message_index)
        for p in findings(run([line], Recipe(), per_example=True))
        if p.severity == "error" and p.line
    ]
    assert found == [("special_token_text", 1)]
