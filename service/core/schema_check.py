"""Decoding problems: what is wrong with a line's JSON shape (keys, types), explained.

The fast path (`formats`) decodes a line straight into the Structs; msgspec rejects unknown
keys and wrong types. Only when that decode fails does this slow path walk the generic JSON
value to say *every* thing that is wrong, with the message index and a sentence a person
understands, and build a cleaned copy so the rules in `lint` and the token counts can still
run for the report. The rules a type cannot express live in `lint`.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec

from service.core.conversation import (
    ChatExample,
    FunctionCall,
    FunctionDef,
    ImagePart,
    PreferenceExample,
    RefusalPart,
    TextPart,
    Tool,
    ToolCall,
)
from service.core.problems import Change, Problem, problem

MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "weight"})
CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# The slow, explaining path over generic JSON values


class _Walker:
    def __init__(self, line: int | None) -> None:
        self.line = line
        self.problems: list[Problem] = []
        self.cleaned: list[Change] = []  # what decoding already removed; a `fix` policy keeps it removed

    def add(self, code: str, message: str, index: int | None = None) -> None:
        self.problems.append(problem(code, message, self.line, index))

    def keys(
        self, obj: dict[str, Any], allowed: frozenset[str], code: str, where: str, index: int | None = None
    ) -> dict[str, Any]:
        for key in obj:
            if key not in allowed:
                self.add(
                    code,
                    f"{where} contains an extra key {key!r} (allowed: {', '.join(sorted(allowed))})",
                    index,
                )
                removed = Change("remove_unknown_key", code, self.line, index, f"removed the key {key!r}")
                self.cleaned.append(removed)
        return {k: v for k, v in obj.items() if k in allowed}

    def message(self, m: Any, i: int) -> dict[str, Any] | None:
        if not isinstance(m, dict):
            self.add("invalid_messages", f"message {i} is {_type_name(m)}, not an object", i)
            return None
        m = self.keys(m, MESSAGE_KEYS, "unknown_message_key", f"message {i}", i)
        role = m.get("role")
        if not isinstance(role, str):
            m["role"] = "" if role is None else str(role)
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            if isinstance(content, list):
                m["content"] = self.parts(content, i)
            else:
                self.add(
                    "invalid_content",
                    f"message {i} content is {_type_name(content)}; expected a string or a list of parts",
                    i,
                )
                m["content"] = ""
        for key in ("name", "tool_call_id"):
            if key in m and not isinstance(m[key], str):
                self.add(
                    "invalid_field", f"message {i} `{key}` is {_type_name(m[key])}; expected a string", i
                )
                del m[key]
        if "weight" in m and type(m["weight"]) is not int:
            # an int weight is judged on the Struct; anything else cannot even be decoded
            w = m.pop("weight")
            if m.get("role") == "assistant":
                self.add("invalid_weight", f"message {i} has weight {w!r}; it must be the integer 0 or 1", i)
            else:
                self.add(
                    "weight_on_non_assistant",
                    f"{m.get('role')} message {i} has `weight`; only assistant messages may",
                    i,
                )
                self.cleaned.append(
                    Change("remove_weight", "weight_on_non_assistant", self.line, i, f"removed weight {w!r}")
                )
        for key in ("tool_calls", "function_call"):
            if key in m and m[key] is not None:
                try:
                    msgspec.convert(m[key], _FIELD_TYPES[key])
                except msgspec.ValidationError as e:
                    self.add("invalid_field", f"message {i} `{key}` is malformed: {e}", i)
                    del m[key]
        return cast(dict[str, Any], m)

    def parts(self, parts: list[Any], i: int) -> list[Any]:
        good: list[Any] = []
        for j, part in enumerate(parts):
            try:
                msgspec.convert(part, _PART_TYPE)
            except msgspec.ValidationError as e:
                self.add(
                    "invalid_content",
                    f"message {i} content part {j} is not a valid text, image_url or refusal part: {e}",
                    i,
                )
            else:
                good.append(part)
        return good

    def chat(
        self, obj: Any, allowed: frozenset[str] = CHAT_KEYS, where: str = "the example"
    ) -> dict[str, Any] | None:
        if not isinstance(obj, dict):
            self.add("not_an_object", f"{where} is {_type_name(obj)}, not an object")
            return None
        if "messages" not in obj:
            self.add("missing_messages", f"{where} is missing key 'messages'")
            return None
        obj = self.keys(obj, allowed, "unknown_key", where)
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            self.add("invalid_messages", f"`messages` is {_type_name(messages)}; expected a non-empty list")
            return None
        cleaned = [self.message(m, i) for i, m in enumerate(messages)]
        if any(m is None for m in cleaned):
            return None
        obj["messages"] = cleaned
        for key in ("tools", "functions", "parallel_tool_calls"):
            if key in obj:
                try:
                    msgspec.convert(obj[key], _FIELD_TYPES[key])
                except msgspec.ValidationError as e:
                    self.add("invalid_field", f"`{key}` is malformed: {e}")
                    del obj[key]
        return cast(dict[str, Any], obj)


_PART_TYPE = TextPart | ImagePart | RefusalPart
_FIELD_TYPES: dict[str, Any] = {
    "tool_calls": list[ToolCall],
    "function_call": FunctionCall,
    "tools": list[Tool],
    "functions": list[FunctionDef],
    "parallel_tool_calls": bool,
}


Explained = tuple[Any, list[Problem], list[Change]]


def explain_chat(obj: Any, line: int | None) -> Explained:
    """Every schema problem of a generic JSON value, and a cleaned example when one can be made."""
    w = _Walker(line)
    cleaned = w.chat(obj)
    if cleaned is None:
        return None, w.problems, w.cleaned
    try:
        example = msgspec.convert(cleaned, ChatExample)
    except msgspec.ValidationError as e:  # a rule the walker does not know yet: still name it
        w.add("invalid_field", f"the example does not match the chat schema: {e}")
        return None, w.problems, w.cleaned
    return example, w.problems, w.cleaned


def explain_preference(obj: Any, line: int | None) -> Explained:
    w = _Walker(line)
    if not isinstance(obj, dict):
        w.add("not_an_object", f"the example is {_type_name(obj)}, not an object")
        return None, w.problems, w.cleaned
    obj = w.keys(obj, PREFERENCE_KEYS, "unknown_key", "the example")
    if "input" not in obj:
        w.add("missing_messages", "the example is missing key 'input' (with its 'messages')")
        return None, w.problems, w.cleaned
    chat = w.chat(obj["input"], CHAT_KEYS, "`input`")
    outputs: dict[str, list[Any]] = {}
    for key in ("preferred_output", "non_preferred_output"):
        value = obj.get(key)
        if not isinstance(value, list) or len(value) != 1:
            w.add("invalid_preference", f"`{key}` must be a list holding exactly one assistant message")
            continue
        m = w.message(value[0], len(chat["messages"]) if chat else 0)
        if m is not None:
            outputs[key] = [m]
    if chat is None or len(outputs) != 2:
        return None, w.problems, w.cleaned
    try:
        example = msgspec.convert({"input": chat, **outputs}, PreferenceExample)
    except msgspec.ValidationError as e:
        w.add("invalid_field", f"the example does not match the preference schema: {e}")
        return None, w.problems, w.cleaned
    return example, w.problems, w.cleaned
