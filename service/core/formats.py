"""Input formats: detection, decoding and conversion to the internal representation.

Every format becomes `ChatExample` or `PreferenceExample`. OpenAI chat lines take the fast
path (a typed msgspec decode); the others are converted to OpenAI-shaped values first and
then go through the explaining schema check, so every format reports problems the same way.

For a JSON array file (as ShareGPT sets usually are) `line` is the 1-based position of the
example in the array; for JSONL it is the line number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import msgspec

from service.core.conversation import ChatExample, Example, PreferenceExample
from service.core.problems import Change, Problem, problem
from service.core.schema_check import explain_chat, explain_preference

Format = Literal["openai", "preference", "sharegpt", "hh", "alpaca", "completion"]
FORMATS: tuple[Format, ...] = ("openai", "preference", "sharegpt", "hh", "alpaca", "completion")
FORMAT_HELP = {
    "openai": 'OpenAI chat: {"messages": [...], "tools": [...]}',
    "preference": 'OpenAI preference (DPO): {"input": {"messages": [...]}, "preferred_output": [...], '
    '"non_preferred_output": [...]}',
    "sharegpt": 'ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}',
    "hh": 'Human/Assistant transcripts: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...} '
    'or {"text": ...}',
    "alpaca": 'Alpaca: {"instruction", "input", "output"}',
    "completion": 'legacy {"prompt", "completion"}',
}


class FormatError(ValueError):
    """The input's format cannot be determined or is not supported."""


class Record(msgspec.Struct):
    """One input example after decoding: the example (None when unusable) and its decoding problems.

    The rules a type cannot express are `lint`'s; `pipeline.Processor` applies both."""

    line: int
    example: Example | None
    problems: list[Problem]
    cleaned: list[Change] = []  # what decoding removed to make the example usable (unknown keys, ...)


_chat_decoder = msgspec.json.Decoder(ChatExample)
_pref_decoder = msgspec.json.Decoder(PreferenceExample)
_any_decoder = msgspec.json.Decoder()


def detect_format(obj: Any) -> Format | None:
    """The format a decoded example looks like, judged by its keys."""
    if not isinstance(obj, dict):
        return None
    keys = obj.keys()
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "preference"
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "chosen" in keys or ("text" in keys and "Assistant:" in str(obj.get("text", ""))):
        return "hh"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "completion"
    return None


# What decoding untrusted bytes can raise: malformed JSON, invalid UTF-8 inside a string (msgspec
# raises UnicodeDecodeError for it), and nesting deep enough to exhaust the recursion limit.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_reason(error: Exception) -> str:
    """What went wrong decoding untrusted JSON, in words (for problem messages)."""
    if isinstance(error, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {error.start}"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)


def _invalid_json(line: int, error: Exception) -> Record:
    return Record(
        line,
        None,
        [problem("invalid_json", f"line {line} is not valid JSON: {decode_reason(error)}", line)],
    )


def decode_line(raw: bytes, line: int, fmt: Format) -> Record:
    """One JSONL line as a Record. OpenAI lines try a typed decode first (the fast path); only
    a line it rejects is decoded generically and explained."""
    typed = _chat_decoder if fmt == "openai" else _pref_decoder if fmt == "preference" else None
    if typed is not None:
        try:
            return Record(line, typed.decode(raw), [])
        except msgspec.ValidationError:
            pass  # valid JSON of the wrong shape, or malformed past the point the types failed: explain
        except DECODE_ERRORS as e:
            return _invalid_json(line, e)
    try:
        obj = _any_decoder.decode(raw)
    except DECODE_ERRORS as e:
        return _invalid_json(line, e)
    return convert_value(obj, fmt, line)


# ---------------------------------------------------------------------------------------------
# Converters from the other formats to OpenAI-shaped values

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "function_call": "assistant",
}


def _sharegpt(obj: dict[str, Any], line: int) -> tuple[Any, list[Problem]]:
    convo = obj.get("conversations")
    if not isinstance(convo, list):
        return None, [problem("missing_messages", "the example has no 'conversations' list", line)]
    messages: list[Any] = []
    problems: list[Problem] = []
    last_call: str | None = None
    if isinstance(obj.get("system"), str) and obj["system"]:
        messages.append({"role": "system", "content": obj["system"]})
    for i, turn in enumerate(convo, len(messages)):
        if not isinstance(turn, dict):
            messages.append(turn)  # the schema check names it
            continue
        who = turn.get("from")
        role = SHAREGPT_ROLES.get(who.lower()) if isinstance(who, str) else None
        if role is None:
            problems.append(
                problem(
                    "unknown_role",
                    f"turn {i} has unknown 'from' value {who!r} "
                    f"(expected one of {', '.join(sorted(SHAREGPT_ROLES))})",
                    line,
                    i,
                )
            )
            role = "user"
        value = turn.get("value")
        m: dict[str, Any] = {"role": role, "content": value}
        if role == "assistant" and who == "function_call":
            call = _sharegpt_call(value, f"call_{i}")
            if call is not None:
                m = {"role": "assistant", "tool_calls": [call]}
                last_call = call["id"]
        elif role == "tool":
            m["tool_call_id"] = str(turn.get("tool_call_id") or last_call or "")
        messages.append(m)
    return {"messages": messages}, problems


def _sharegpt_call(value: Any, call_id: str) -> dict[str, Any] | None:
    """A ShareGPT `function_call` turn (`{"name": ..., "arguments": ...}` as JSON text) as a tool call."""
    try:
        spec = msgspec.json.decode(value) if isinstance(value, str) else None
    except DECODE_ERRORS:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return None
    arguments = spec.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = msgspec.json.encode(arguments).decode()
    return {"id": call_id, "type": "function", "function": {"name": spec["name"], "arguments": arguments}}


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_transcript(text: str) -> list[dict[str, str]]:
    """A `Human: ... Assistant: ...` transcript as messages; text before the first turn is a system prompt."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    messages: list[dict[str, str]] = []
    if parts[0].strip():
        messages.append({"role": "system", "content": parts[0].strip()})
    for who, body in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if who == "Human" else "assistant", "content": body.strip()})
    return messages


def _hh(obj: dict[str, Any], line: int) -> tuple[Any, list[Problem]]:
    if "chosen" not in obj:
        text = obj.get("text")
        if not isinstance(text, str):
            return None, [
                problem("missing_messages", "the example has neither 'chosen' nor a 'text' transcript", line)
            ]
        return {"messages": parse_transcript(text)}, []
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return None, [
            problem("invalid_preference", "'chosen' and 'rejected' must both be transcript strings", line)
        ]
    a, b = parse_transcript(chosen), parse_transcript(rejected)
    if (
        len(a) < 2
        or len(b) < 2
        or a[:-1] != b[:-1]
        or a[-1]["role"] != "assistant"
        or b[-1]["role"] != "assistant"
    ):
        return None, [
            problem(
                "invalid_preference",
                "'chosen' and 'rejected' must share every turn but the final assistant reply",
                line,
            )
        ]
    return {"input": {"messages": a[:-1]}, "preferred_output": [a[-1]], "non_preferred_output": [b[-1]]}, []


def _alpaca(obj: dict[str, Any], line: int) -> tuple[Any, list[Problem]]:
    instruction, extra, output = obj.get("instruction"), obj.get("input"), obj.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        return None, [
            problem("missing_messages", "an Alpaca example needs string 'instruction' and 'output'", line)
        ]
    prompt = instruction + (f"\n\n{extra}" if isinstance(extra, str) and extra else "")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    if isinstance(obj.get("system"), str) and obj["system"]:
        messages.insert(0, {"role": "system", "content": obj["system"]})
    return {"messages": messages}, []


def _completion(obj: dict[str, Any], line: int) -> tuple[Any, list[Problem]]:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return None, [
            problem("missing_messages", "a legacy example needs string 'prompt' and 'completion'", line)
        ]
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    }, []


_CONVERTERS = {"sharegpt": _sharegpt, "hh": _hh, "alpaca": _alpaca, "completion": _completion}


def convert_value(obj: Any, fmt: Format, line: int) -> Record:
    """One decoded value of any format as a Record."""
    if fmt == "openai":
        return Record(line, *explain_chat(obj, line))
    if fmt == "preference":
        return Record(line, *explain_preference(obj, line))
    if not isinstance(obj, dict):
        return Record(line, None, [problem("not_an_object", "the example is not an object", line)])
    value, problems = _CONVERTERS[fmt](obj, line)
    if value is None:
        return Record(line, None, problems)
    example, more, cleaned = (explain_preference if "input" in value else explain_chat)(value, line)
    return Record(line, example, problems + more, cleaned)


# ---------------------------------------------------------------------------------------------
# Whole inputs


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(chunks, 1):
        if raw and not raw.isspace():  # no copy of the line, unlike strip()
            yield number, raw


def sniff(first: bytes) -> Format:
    """The format of an input, from its first example; FormatError when nothing fits."""
    try:
        obj = _any_decoder.decode(first)
    except DECODE_ERRORS as e:
        raise FormatError(
            f"cannot detect the format: the first example is not valid JSON ({decode_reason(e)})"
        ) from e
    if isinstance(obj, list):
        obj = obj[0] if obj else None
    fmt = detect_format(obj)
    if fmt is None:
        raise FormatError(
            f"cannot detect the format of the first example; pass --format (one of {', '.join(FORMATS)})"
        )
    return fmt


def read_records(
    lines: Iterable[bytes], fmt: Format | None = None, on_format: Callable[[Format], None] | None = None
) -> Iterator[Record]:
    """Decode JSONL lines, or one JSON array (on one line or spread over many), into Records.

    JSONL streams line by line; a JSON array file is decoded whole. A file is taken for an
    array when its first line starts with `[` and either is not valid JSON on its own (the
    array spans lines) or is the only line. `on_format` hears the format once it is known
    (detected from the first example unless given)."""
    it = _lines(lines)
    first = next(it, None)
    if first is None:
        return
    number, raw = first
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as some editors write
    if raw.lstrip()[:1] == b"[":
        second = next(it, None)
        head_alone = _decodes(raw)
        if second is None or not head_alone:
            rest = [raw] + ([second[1]] if second else []) + [r for _, r in it]
            yield from _read_array(b"\n".join(rest), fmt, on_format)
            return
        it = _chain(second, it)
    head = [(number, raw)]
    chosen = fmt or _detect(raw)
    while chosen is None and len(head) < DETECT_LINES:  # detect from the first line that decodes
        following = next(it, None)
        if following is None:
            break
        head.append(following)
        chosen = _detect(following[1])
    chosen = chosen or "openai"  # the native format: its checks then name what is wrong with each line
    if on_format is not None:
        on_format(chosen)
    for number, raw in head:
        yield decode_line(raw, number, chosen)
    for number, raw in it:
        yield decode_line(raw, number, chosen)


def _decodes(raw: bytes) -> bool:
    try:
        _any_decoder.decode(raw)
    except DECODE_ERRORS:
        return False
    return True


def _chain(first: tuple[int, bytes], rest: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    yield first
    yield from rest


DETECT_LINES = 100  # lines read ahead at most to find one whose format is recognisable


def _detect(raw: bytes) -> Format | None:
    try:
        return sniff(raw)
    except FormatError:
        return None


def _read_array(
    raw: bytes, fmt: Format | None, on_format: Callable[[Format], None] | None
) -> Iterator[Record]:
    try:
        items = _any_decoder.decode(raw)
    except DECODE_ERRORS as e:
        yield Record(
            1,
            None,
            [problem("invalid_json", f"the JSON array is not valid JSON: {decode_reason(e)}", 1)],
        )
        return
    if not isinstance(items, list):
        yield Record(1, None, [problem("not_an_object", "the file is neither JSONL nor a JSON array", 1)])
        return
    chosen: Format = fmt or (detect_format(items[0]) if items else None) or "openai"
    if on_format is not None:
        on_format(chosen)
    for index, obj in enumerate(items, 1):
        yield convert_value(obj, chosen, index)


def parse_format(value: str | None) -> Format | None:
    if value is None or value == "auto":
        return None
    for fmt in FORMATS:
        if value == fmt:
            return fmt
    raise FormatError(f"unknown format {value!r}; choose one of {', '.join(FORMATS)}")
