"""Rendering a conversation with a profile's template, with the inputs transformers would give it.

Messages reach the template as plain dicts, as `apply_chat_template` passes them after dropping
keys whose value is None: `role`, `content` (the text), `tool_calls` (`{id, type, function: {name,
arguments}}`, arguments decoded to a dict when they are a JSON object, as HF templates expect),
`tool_call_id`, `name`. `weight` is tuneset's and never reaches the template. The template also gets
`tools` (None when the example has none), `documents=None`, `add_generation_prompt` and the named
special tokens (`bos_token`, `eos_token`, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from service.core.conversation import ChatExample, FunctionDef, Message, text_of
from service.core.profiles.jinja_env import render_template
from service.core.profiles.model import ModelProfile


@dataclass(frozen=True)
class Rendered:
    text: str
    generation_spans: list[tuple[int, int]] = field(default_factory=list)


def _arguments(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return raw
    return value if isinstance(value, dict) else raw


def template_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if m.content is not None:
        out["content"] = text_of(m)
    calls: list[dict[str, Any]] = [
        {
            "id": tc.id,
            "type": "function",
            "function": {"name": tc.function.name, "arguments": _arguments(tc.function.arguments)},
        }
        for tc in m.tool_calls or []
    ]
    if m.function_call is not None:
        calls.append(
            {
                "type": "function",
                "function": {
                    "name": m.function_call.name,
                    "arguments": _arguments(m.function_call.arguments),
                },
            }
        )
    if calls:
        out["tool_calls"] = calls
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _function(f: FunctionDef) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name}
    if f.description is not None:
        out["description"] = f.description
    if f.parameters is not None:
        out["parameters"] = f.parameters
    if f.strict is not None:
        out["strict"] = f.strict
    return out


def template_tools(example: ChatExample) -> list[dict[str, Any]] | None:
    tools = [{"type": "function", "function": _function(t.function)} for t in example.tools or []]
    tools += [{"type": "function", "function": _function(f)} for f in example.functions or []]
    return tools or None


def template_messages(example: ChatExample) -> list[dict[str, Any]]:
    return [template_message(m) for m in example.messages]


def render_dicts(
    profile: ModelProfile,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool = False,
) -> Rendered:
    variables: dict[str, Any] = dict(profile.template_vars)
    variables.update(
        messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt
    )
    text, spans = render_template(profile.compiled, variables)
    return Rendered(text, spans)


def render_messages(
    profile: ModelProfile,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> Rendered:
    """The template's text for these messages (raises TemplateRaised when the template refuses them)."""
    clean = [{k: v for k, v in m.items() if v is not None and k != "weight"} for m in messages]
    return render_dicts(profile, clean, tools, add_generation_prompt)
