"""A profile's answer on a fixed set of irregular conversations (`tuneset templates check`).

Each case is rendered through `profile_view` exactly as a build would render it; the row says
whether the template rendered it, refused it or rewrote history, and which text carries loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from service.core.conversation import ChatExample
from service.core.profiles.model import ModelProfile
from service.core.profiles.profile_view import Finding, profile_view
from service.core.view import TrainingView


@dataclass(frozen=True)
class CheckRow:
    case: str
    outcome: Literal["rendered", "rejected", "rewritten"]
    trained: str
    findings: list[Finding]


def _example(messages: list[Any], **extra: Any) -> ChatExample:
    return msgspec.convert({"messages": messages, **extra}, ChatExample)


_SYS = {"role": "system", "content": "You are a helpful assistant."}
_U1 = {"role": "user", "content": "What is the capital of France?"}
_A1 = {"role": "assistant", "content": "Paris."}
_U2 = {"role": "user", "content": "And of Italy?"}
_A2 = {"role": "assistant", "content": "Rome."}
_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
_CALL = {
    "role": "assistant",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21}'}
_U_WEATHER = {"role": "user", "content": "What's the weather in Paris?"}
_A_WEATHER = {"role": "assistant", "content": "It is 21 °C in Paris."}

CHECK_CASES: dict[str, ChatExample] = {
    "regular": _example([_SYS, _U1, _A1]),
    "multi_turn": _example([_SYS, _U1, _A1, _U2, _A2]),
    "no_system": _example([_U1, _A1]),
    "consecutive_assistant": _example(
        [_SYS, _U1, _A1, {"role": "assistant", "content": "It is also the largest city."}]
    ),
    "consecutive_user": _example([_SYS, _U1, {"role": "user", "content": "Answer in one word."}, _A1]),
    "assistant_first": _example([{"role": "assistant", "content": "Hello! How can I help?"}, _U1, _A1]),
    "trailing_user": _example([_SYS, _U1, _A1, _U2]),
    "tool_calls": _example([_SYS, _U_WEATHER, _CALL, _RESULT, _A_WEATHER], tools=[_WEATHER]),
    "tool_calls_with_content": _example(
        [_SYS, _U_WEATHER, {**_CALL, "content": "Let me check."}, _RESULT, _A_WEATHER], tools=[_WEATHER]
    ),
    "empty_content": _example([_SYS, _U1, {"role": "assistant", "content": ""}]),
    "weight_zero": _example([_SYS, _U1, {**_A1, "weight": 0}, _U2, _A2]),
    "reasoning": _example(
        [
            _U1,
            {"role": "assistant", "content": "<think>\nThe capital is Paris.\n</think>\n\nParis."},
            _U2,
            _A2,
        ]
    ),
}


def _merge(view: TrainingView) -> list[str]:
    """The trained text as runs of consecutive trained segments."""
    runs: list[str] = []
    current: list[str] = []
    for seg in view.segments:
        if seg.trained:
            current.append(seg.text)
        elif current:
            runs.append("".join(current))
            current = []
    if current:
        runs.append("".join(current))
    return [repr(r) for r in runs]


def check_profile(profile: ModelProfile) -> list[CheckRow]:
    rows: list[CheckRow] = []
    for case, example in CHECK_CASES.items():
        result = profile_view(profile, example)
        if result.view is None:
            rows.append(CheckRow(case, "rejected", "", result.findings))
            continue
        rewritten = any(f.code == "template_rewrites_history" for f in result.findings)
        trained = " | ".join(_merge(result.view)) or "(nothing)"
        rows.append(CheckRow(case, "rewritten" if rewritten else "rendered", trained, result.findings))
    return rows
