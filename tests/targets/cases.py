"""The conversations every target's test converts: the real ones of tests/data (MT-Bench,
ShareGPT), their irregular reshapings (examples/chats.jsonl), and hand-written tool-call,
weight, image and refusal examples that exercise what some targets cannot express."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import mtbench_conversations, sharegpt_conversations

ROOT = Path(__file__).parents[2]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def _call(ident: str, city: str) -> dict[str, Any]:
    args = json.dumps({"city": city, "unit": "c"})
    return {"id": ident, "type": "function", "function": {"name": "get_weather", "arguments": args}}


TOOL_CALLS: list[dict[str, Any]] = [
    {  # one call, its result as JSON, then the answer
        "messages": [
            {"role": "system", "content": "You answer weather questions with the tool."},
            {"role": "user", "content": "How warm is it in Lisbon?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("call_1", "Lisbon")]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'},
            {"role": "assistant", "content": "It is 21 °C and clear in Lisbon."},
        ],
        "tools": [WEATHER_TOOL],
    },
    {  # parallel calls with text beside them, a plain-text result, a weight-0 turn first
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello, what can I do?", "weight": 0},
            {"role": "user", "content": "Compare Oslo and Rome."},
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [_call("a", "Oslo"), _call("b", "Rome")],
            },
            {"role": "tool", "tool_call_id": "a", "content": "3 degrees, snow"},
            {"role": "tool", "tool_call_id": "b", "content": '{"temp": 17}'},
            {"role": "assistant", "content": "Rome is 14 degrees warmer than Oslo."},
        ],
        "tools": [WEATHER_TOOL],
        "parallel_tool_calls": True,
    },
]

OTHERS: list[dict[str, Any]] = [
    {  # an image from the user, content as parts
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A single white pixel."}]},
        ]
    },
    {  # a refusal part
        "messages": [
            {"role": "user", "content": "Tell me a secret password."},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't share passwords."}]},
        ]
    },
    {  # a reserved string of Bedrock's
        "messages": [
            {"role": "system", "content": "Transcripts use the form User: ... Bot: ..."},
            {"role": "user", "content": "Format this: User: hi"},
            {"role": "assistant", "content": "User: hi\nBot: hello [EOS]"},
        ]
    },
    {  # weights: the first turn is context only
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "5", "weight": 0},
            {"role": "user", "content": "Really?"},
            {"role": "assistant", "content": "Sorry: 4.", "weight": 1},
        ]
    },
]


def chat_lines() -> list[dict[str, Any]]:
    """Every chat case: real conversations, the irregular ones, tools and the odd ones."""
    irregular = [json.loads(x) for x in (ROOT / "examples" / "chats.jsonl").read_text().splitlines()]
    return [*mtbench_conversations(), *sharegpt_conversations()[:200], *irregular, *TOOL_CALLS, *OTHERS]


def preference_lines() -> list[str]:
    """Human/Assistant chosen/rejected pairs (examples/hh.jsonl, made from MT-Bench)."""
    return (ROOT / "examples" / "hh.jsonl").read_text().splitlines()


def write_jsonl(path: Path, values: list[Any]) -> Path:
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return path
