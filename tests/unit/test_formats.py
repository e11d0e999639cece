"""Every input format decodes to the one internal representation, auto-detected or named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.core.conversation import ChatExample, PreferenceExample
from service.core.formats import FormatError, detect_format, parse_format, parse_transcript, read_records
from service.core.pipeline import Recipe, run
from tests.conftest import jsonl


def _one(value: Any, fmt: str | None = None) -> Any:
    records = list(read_records([jsonl(value)], parse_format(fmt)))
    assert len(records) == 1
    return records[0]


def test_openai_chat_with_the_full_schema() -> None:
    value = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
                ],
                "weight": 0,
            },
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't say."}], "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "parallel_tool_calls": False,
    }
    record = _one(value)
    assert isinstance(record.example, ChatExample)
    assert record.problems == []
    # round trip: what we write is what we read
    assert json.loads(msgspec.json.encode(record.example)) == value


def test_preference_format() -> None:
    value = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "What?"}],
    }
    assert detect_format(value) == "preference"
    record = _one(value)
    assert isinstance(record.example, PreferenceExample)
    assert record.problems == []


def test_sharegpt_file_converts_and_validates(data_dir: Path) -> None:
    lines = (data_dir / "sharegpt_fastchat_dummy.json").open("rb")
    report = run(lines, Recipe(model="gpt-4o-mini"))
    assert report.format == "sharegpt"
    assert report.examples == 500
    assert report.examples_out == 500
    assert report.ok
    assert set(report.problem_counts) == {"no_system_message"}
    assert report.tokens.trained_total > 0


def test_sharegpt_roles_and_system() -> None:
    record = _one(
        {
            "id": "x",
            "system": "Be kind.",
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
        }
    )
    assert [(m.role, m.content) for m in record.example.messages] == [
        ("system", "Be kind."),
        ("user", "Hi"),
        ("assistant", "Hello"),
    ]
    bad = _one({"conversations": [{"from": "robot", "value": "Hi"}]}, "sharegpt")
    assert [p.code for p in bad.problems][:1] == ["unknown_role"]
    assert bad.problems[0].message_index == 0


def test_human_assistant_pairs_become_preference_examples() -> None:
    value = {
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: No idea.",
    }
    assert detect_format(value) == "hh"
    record = _one(value)
    assert isinstance(record.example, PreferenceExample)
    assert [m.content for m in record.example.input.messages] == ["What is 2+2?", "4.", "And 3+3?"]
    assert record.example.preferred_output[0].content == "6."
    assert record.example.non_preferred_output[0].content == "No idea."
    diverging = _one({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"})
    assert [p.code for p in diverging.problems] == ["invalid_preference"]


def test_transcript_parsing() -> None:
    assert parse_transcript("Be brief.\n\nHuman: hi\n\nAssistant: hello") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    single = _one({"text": "\n\nHuman: hi\n\nAssistant: hello"})
    assert isinstance(single.example, ChatExample)


def test_alpaca_and_completion() -> None:
    alpaca = _one({"instruction": "Translate", "input": "bonjour", "output": "hello"})
    assert [(m.role, m.content) for m in alpaca.example.messages] == [
        ("user", "Translate\n\nbonjour"),
        ("assistant", "hello"),
    ]
    legacy = _one({"prompt": "2+2=", "completion": "4"})
    assert [(m.role, m.content) for m in legacy.example.messages] == [("user", "2+2="), ("assistant", "4")]


def test_explicit_format_overrides_detection() -> None:
    record = _one({"messages": [{"role": "user", "content": "hi"}]}, "alpaca")
    assert record.example is None
    assert [p.code for p in record.problems] == ["missing_messages"]
    with pytest.raises(FormatError, match="unknown format"):
        parse_format("csv")


def test_json_array_lines_are_positions() -> None:
    data = json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": 1, "completion": "b"}]).encode()
    records = list(read_records([data]))
    assert [r.line for r in records] == [1, 2]
    assert records[1].example is None


def test_blank_lines_keep_numbering() -> None:
    data = [b'{"messages": [{"role": "user", "content": "a"}]}\n', b"\n", b"{bad json\n"]
    records = list(read_records(data))
    assert [r.line for r in records] == [1, 3]
    assert records[1].problems[0].code == "invalid_json"
    assert "line 3" in records[1].problems[0].message


def test_sharegpt_function_calls_and_observations_become_tool_traffic() -> None:
    record = _one(
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": '{"temp": 21}'},
                {"from": "gpt", "value": "21 degrees."},
            ]
        }
    )
    assert record.problems == []
    call = record.example.messages[1]
    assert call.tool_calls[0].function.name == "weather"
    assert json.loads(call.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert record.example.messages[2].tool_call_id == call.tool_calls[0].id
    report = run(
        [
            jsonl(
                {
                    "conversations": [
                        {"from": "human", "value": "q"},
                        {"from": "function_call", "value": '{"name": "f"}'},
                        {"from": "observation", "value": "r"},
                        {"from": "gpt", "value": "a"},
                    ]
                }
            )
        ],
        Recipe(),
    )
    assert "unmatched_tool_call_id" not in report.problem_counts
