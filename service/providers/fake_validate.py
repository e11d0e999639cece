"""The fake provider's own check of fine-tuning files.

Written apart from `service.core` on purpose: the fake is a second, independent opinion on what
tuneset writes, so a bug shared by the two would have to be made twice. Messages use the
provider's wording where it is known (shared/openai-format.md) and the same style elsewhere.
The first problem wins, as on the provider. Token counts are a rough estimate (4 bytes a token),
enough for `trained_tokens` to be plausible and to grow with the data.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

MIN_EXAMPLES = 10
SPECIAL_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>")
ROLES = ("system", "user", "assistant", "tool", "function")
CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
MESSAGE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "weight", "tool_calls", "function_call", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
    "function": frozenset({"role", "content", "name"}),
}
FORMAT_NAMES = {
    "chat": "fine-tune-chat",
    "preference": "fine-tune-preference",
    "completion": "fine-tune-completions",
}

FileFormat = Literal["chat", "preference", "completion"]


class FileCheck(msgspec.Struct, frozen=True):
    """What processing found: the format, the examples, rough billed tokens per epoch, or the error."""

    format: FileFormat | None
    examples: int
    tokens: int
    error: str | None = None


class _Invalid(Exception):
    pass


def rough_tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def check_file(data: bytes, *, min_examples: int = MIN_EXAMPLES) -> FileCheck:
    """Check a JSONL fine-tuning file the way the provider does when it processes it."""
    fmt: FileFormat | None = None
    examples = 0
    tokens = 0
    try:
        for n, raw in enumerate(data.split(b"\n"), start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                value = msgspec.json.decode(line)
            except msgspec.DecodeError as e:
                raise _Invalid(
                    f"Invalid file format. Example {n} cannot be parsed. "
                    f"Error: line contains invalid json: {e} (line {n})"
                ) from None
            if not isinstance(value, dict):
                raise _Invalid(f"Invalid file format. Example {n} is not a JSON object")
            kind = _kind(value)
            if kind is None:
                if fmt is None:
                    raise _Invalid(
                        "Unexpected file format, expected either prompt/completion pairs or chat messages."
                    )
                kind = fmt  # report what this example lacks for the file's format
            if fmt is None:
                fmt = kind
            elif kind != fmt:
                raise _Invalid(
                    f"Invalid file format. Example {n} is in the {FORMAT_NAMES[kind]} format, "
                    f"but previous examples are in the {FORMAT_NAMES[fmt]} format."
                )
            if kind == "chat":
                tokens += _check_chat(value, n)
            elif kind == "preference":
                tokens += _check_preference(value, n)
            else:
                tokens += _check_completion(value, n)
            examples += 1
    except _Invalid as e:
        return FileCheck(format=fmt, examples=examples, tokens=tokens, error=str(e))
    if examples < min_examples:
        return FileCheck(
            format=fmt,
            examples=examples,
            tokens=tokens,
            error=f"Training file has {examples} example(s), but must have at least {min_examples} examples",
        )
    return FileCheck(format=fmt, examples=examples, tokens=tokens)


def _kind(value: dict[str, Any]) -> FileFormat | None:
    if "messages" in value:
        return "chat"
    if any(k in value for k in PREFERENCE_KEYS):
        return "preference"
    if "prompt" in value or "completion" in value:
        return "completion"
    return None


def _check_chat(value: dict[str, Any], n: int) -> int:
    if "messages" not in value:
        raise _Invalid(f"Invalid file format. Example {n} is missing key 'messages'")
    _no_extra(value, CHAT_KEYS, f"Invalid file format. Example {n}")
    tokens = _check_tools(value, n)
    messages = value["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Invalid(f"Invalid file format. Example {n}, 'messages' must be a non-empty list")
    for i, message in enumerate(messages, start=1):
        tokens += _check_message(message, n, i, images=True)
    if not any(m.get("role") == "assistant" for m in messages):
        raise _Invalid(
            f"Invalid file format. Example {n} must have at least one message with role 'assistant'"
        )
    return tokens + 3


def _check_preference(value: dict[str, Any], n: int) -> int:
    for key in PREFERENCE_KEYS:
        if key not in value:
            raise _Invalid(f"Invalid file format. Example {n} is missing key '{key}'")
    _no_extra(value, frozenset(PREFERENCE_KEYS), f"Invalid file format. Example {n}")
    prompt = value["input"]
    if not isinstance(prompt, dict):
        raise _Invalid(f"Invalid file format. Example {n}, 'input' must be an object")
    if "messages" not in prompt:
        raise _Invalid(f"Invalid file format. Example {n}, 'input' is missing key 'messages'")
    _no_extra(prompt, INPUT_KEYS, f"Invalid file format. Example {n}, 'input'")
    tokens = _check_tools(prompt, n)
    messages = prompt["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Invalid(f"Invalid file format. Example {n}, 'input.messages' must be a non-empty list")
    for i, message in enumerate(messages, start=1):
        tokens += _check_message(message, n, i, images=False)
    for key in ("preferred_output", "non_preferred_output"):
        out = value[key]
        if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict)):
            raise _Invalid(f"Invalid file format. Example {n}, '{key}' must hold exactly one message")
        if out[0].get("role") != "assistant":
            raise _Invalid(f"Invalid file format. Example {n}, '{key}' must be an assistant message")
        tokens += _check_message(out[0], n, 1, images=False, where=key)
    return tokens + 3


def _check_completion(value: dict[str, Any], n: int) -> int:
    for key in ("prompt", "completion"):
        if not isinstance(value.get(key), str):
            raise _Invalid(f"Invalid file format. Example {n}, '{key}' must be a string")
    _no_extra(value, frozenset({"prompt", "completion"}), f"Invalid file format. Example {n}")
    return rough_tokens(value["prompt"]) + rough_tokens(value["completion"])


def _no_extra(value: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise _Invalid(f'{prefix} contains an extra "{extra[0]}".')


def _check_tools(value: dict[str, Any], n: int) -> int:
    tools = value.get("tools")
    if tools is None:
        return 0
    if not isinstance(tools, list) or not all(
        isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        for t in tools
    ):
        raise _Invalid(
            f"Invalid file format. Example {n}, 'tools' must be a list of "
            "{'type': 'function', 'function': {'name': ...}} objects"
        )
    return rough_tokens(msgspec.json.encode(tools).decode())


def _check_message(message: object, n: int, i: int, *, images: bool, where: str = "message") -> int:
    prefix = f"Invalid file format. Example {n}, {where} {i}"
    if not isinstance(message, dict):
        raise _Invalid(f"{prefix} Input should be a valid dictionary")
    if "role" not in message:
        raise _Invalid(f"{prefix} Discriminator 'role' is missing in value")
    role = message["role"]
    if role not in ROLES:
        expected = ", ".join(f"'{r}'" for r in ROLES)
        raise _Invalid(
            f"{prefix} Input tag '{role}' found using 'role' does not match any of the "
            f"expected tags: {expected}"
        )
    _no_extra(message, MESSAGE_KEYS[role], prefix)
    tokens = 3 + rough_tokens(role)
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise _Invalid(f"{prefix} 'name' must be a string")
        tokens += rough_tokens(name) + 1
    elif role == "function":
        raise _Invalid(f"{prefix} is missing key 'name'")
    if "weight" in message:
        weight = message["weight"]
        if isinstance(weight, bool) or weight not in (0, 1):
            raise _Invalid(f"{prefix} 'weight' must be 0 or 1")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _Invalid(f"{prefix} is missing key 'tool_call_id'")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list) or not all(_is_tool_call(c) for c in calls):
            raise _Invalid(
                f"{prefix} 'tool_calls' must be a list of "
                "{'id', 'type': 'function', 'function': {'name', 'arguments'}} objects"
            )
        tokens += rough_tokens(msgspec.json.encode(calls).decode())
    function_call = message.get("function_call")
    if function_call is not None:
        if not _is_function(function_call):
            raise _Invalid(f"{prefix} 'function_call' must be an object with 'name' and 'arguments'")
        tokens += rough_tokens(msgspec.json.encode(function_call).decode())
    content = message.get("content")
    if content is None:
        if role == "assistant" and (calls or function_call):
            return tokens
        raise _Invalid(f"{prefix} is missing key 'content'")
    return tokens + _check_content(content, role, n, prefix, images=images)


def _check_content(content: object, role: str, n: int, prefix: str, *, images: bool) -> int:
    if isinstance(content, str):
        _special(content, n)
        return rough_tokens(content)
    if not isinstance(content, list) or not content:
        raise _Invalid(f"{prefix} 'content' must be a string or a non-empty array of content parts")
    tokens = 0
    for k, part in enumerate(content, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            _special(part["text"], n)
            tokens += rough_tokens(part["text"])
        elif kind == "image_url" and role == "user" and images:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
                raise _Invalid(f"{prefix} content part {k} has an invalid image_url")
            if image.get("detail", "auto") not in ("auto", "low", "high"):
                raise _Invalid(f"{prefix} content part {k} has an invalid image detail")
            tokens += 85
        elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            if len(content) != 1:
                raise _Invalid(f"{prefix} a refusal must be the only content part")
            tokens += rough_tokens(part["refusal"])
        else:
            raise _Invalid(f"{prefix} content part {k} of type '{kind}' is not allowed in {role} messages")
    return tokens


def _special(text: str, n: int) -> None:
    for token in SPECIAL_TOKENS:
        if token in text:
            raise _Invalid(f"Example {n} message contains an invalid token: {token}.")


def _is_function(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("name"), str)
        and isinstance(value.get("arguments"), str)
    )


def _is_tool_call(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and value.get("type") == "function"
        and _is_function(value.get("function"))
    )
