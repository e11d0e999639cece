"""Fixes: each returns a new example and a record of every change it made (what, where, why).

Fixes never mutate their input, so the caller can compare before and after (the report
counts trained tokens on both sides).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from itertools import accumulate

import msgspec

from service.core.conversation import ChatExample, ContentPart, Message, RefusalPart, TextPart, text_of
from service.core.structure import is_unnormalized
from service.core.tokens import special_pattern, special_tokens_in

replace = msgspec.structs.replace


class Change(msgspec.Struct):
    """One change a fix made to one example."""

    kind: str
    code: str | None
    line: int | None
    message_index: int | None
    detail: str


def _with(example: ChatExample, messages: list[Message]) -> ChatExample:
    return replace(example, messages=messages)


def _map_text(m: Message, f: Callable[[str], str]) -> Message:
    content = m.content
    if content is None:
        return m
    if isinstance(content, str):
        return replace(m, content=f(content))
    parts: list[ContentPart] = []
    for p in content:
        if type(p) is TextPart:
            parts.append(TextPart(f(p.text)))
        elif type(p) is RefusalPart:
            parts.append(RefusalPart(f(p.refusal)))
        else:
            parts.append(p)
    return replace(m, content=parts)


def remove_weight_on_non_assistant(
    example: ChatExample, line: int | None
) -> tuple[ChatExample, list[Change]]:
    changes: list[Change] = []
    messages = list(example.messages)
    for i, m in enumerate(messages):
        if m.weight is not None and m.role != "assistant":
            messages[i] = replace(m, weight=None)
            changes.append(
                Change(
                    "remove_weight",
                    "weight_on_non_assistant",
                    line,
                    i,
                    f"removed weight {m.weight} from {m.role} message {i}",
                )
            )
    return _with(example, messages), changes


def remove_special_tokens(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    changes: list[Change] = []
    messages = list(example.messages)
    pattern = special_pattern()
    for i, m in enumerate(messages):
        found = special_tokens_in(text_of(m))
        if found:
            messages[i] = _map_text(m, lambda s: pattern.sub("", s))
            changes.append(
                Change(
                    "remove_special_tokens",
                    "special_token_text",
                    line,
                    i,
                    f"removed {', '.join(found)} from message {i}",
                )
            )
    return _with(example, messages), changes


def normalize_text(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    changes: list[Change] = []
    messages = list(example.messages)
    for i, m in enumerate(messages):
        if is_unnormalized(text_of(m)):
            messages[i] = _map_text(m, lambda s: unicodedata.normalize("NFC", s).strip())
            changes.append(
                Change(
                    "normalize_text",
                    "unnormalized_text",
                    line,
                    i,
                    f"normalized {m.role} message {i} to NFC and stripped surrounding whitespace",
                )
            )
    return _with(example, messages), changes


def drop_empty(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    keep: list[Message] = []
    changes: list[Change] = []
    for i, m in enumerate(example.messages):
        empty = m.content is not None and not text_of(m).strip() and not m.tool_calls and m.role != "tool"
        if empty and not (isinstance(m.content, list) and any(type(p) is not TextPart for p in m.content)):
            changes.append(
                Change("drop_empty_message", "empty_content", line, i, f"dropped empty {m.role} message {i}")
            )
        else:
            keep.append(m)
    return _with(example, keep), changes


def _merge_two(a: Message, b: Message) -> Message:
    if isinstance(a.content, list) or isinstance(b.content, list):
        parts: list[ContentPart] = []
        for c in (a.content, b.content):
            if isinstance(c, list):
                parts.extend(c)
            elif c:
                parts.append(TextPart(c))
        content: str | list[ContentPart] | None = parts
    else:
        texts = [c for c in (a.content, b.content) if c]
        content = "\n\n".join(texts) if texts else a.content
    weight = None if (a.weight != 0 or b.weight != 0) else 0
    calls = [*(a.tool_calls or []), *(b.tool_calls or [])] or None
    return replace(a, content=content, tool_calls=calls, weight=weight)


def merge_consecutive(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    """Merge runs of user (or assistant) messages; a merged assistant turn is trained if any part was."""
    out: list[Message] = []
    changes: list[Change] = []
    for i, m in enumerate(example.messages):
        if out and m.role == out[-1].role and m.role in ("user", "assistant"):
            out[-1] = _merge_two(out[-1], m)
            changes.append(
                Change(
                    "merge_consecutive",
                    "consecutive_same_role",
                    line,
                    i,
                    f"merged {m.role} message {i} into the message before it",
                )
            )
        else:
            out.append(m)
    return _with(example, out), changes


def move_system_first(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    systems = [m for m in example.messages if m.role == "system"]
    rest = [m for m in example.messages if m.role != "system"]
    changes = [
        Change("move_system_first", "system_not_first", line, i, f"moved system message {i} to the front")
        for i, m in enumerate(example.messages)
        if m.role == "system" and any(x.role != "system" for x in example.messages[:i])
    ]
    return _with(example, systems + rest), changes


def insert_system(example: ChatExample, line: int | None, prompt: str) -> tuple[ChatExample, list[Change]]:
    if any(m.role == "system" for m in example.messages):
        return example, []
    change = Change(
        "insert_system_prompt",
        "no_system_message",
        line,
        0,
        f"inserted the configured system prompt ({len(prompt)} characters)",
    )
    return _with(example, [Message("system", prompt), *example.messages]), [change]


def drop_leading_assistant(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    out: list[Message] = []
    changes: list[Change] = []
    seen_user = False
    for i, m in enumerate(example.messages):
        if m.role == "user":
            seen_user = True
        if not seen_user and m.role in ("assistant", "tool"):
            changes.append(
                Change(
                    "drop_leading_assistant",
                    "assistant_first",
                    line,
                    i,
                    f"dropped {m.role} message {i} before the first user message",
                )
            )
            continue
        out.append(m)
    return _with(example, out), changes


def drop_trailing(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    messages = example.messages
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=len(messages) - 1)
    changes = [
        Change(
            "drop_trailing",
            "trailing_non_assistant",
            line,
            i,
            f"dropped trailing {m.role} message {i} (billed, never trained)",
        )
        for i, m in enumerate(messages[last + 1 :], last + 1)
    ]
    return _with(example, list(messages[: last + 1])), changes


def train_last_only(example: ChatExample, line: int | None) -> tuple[ChatExample, list[Change]]:
    """`weight: 0` on every assistant message but the last."""
    messages = list(example.messages)
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    changes: list[Change] = []
    for i, m in enumerate(messages):
        if m.role == "assistant" and i != last and m.weight != 0:
            messages[i] = replace(m, weight=0)
            changes.append(
                Change(
                    "train_last_only",
                    None,
                    line,
                    i,
                    f"set weight 0 on assistant message {i}: only the final turn is trained",
                )
            )
    return _with(example, messages), changes


def split_windows(
    example: ChatExample, line: int | None, billed: list[int], fixed_cost: int, limit: int
) -> tuple[list[ChatExample], list[Change]]:
    """Split an over-long conversation into windows that each fit `limit` tokens.

    `billed` is each message's billed tokens; `fixed_cost` what every window pays regardless
    (tool definitions, the reply priming). Leading system messages go into every window.
    Each window ends on a trained assistant turn and holds as many new turns as fit, then as
    much earlier context as fits; assistant turns that are only context get `weight: 0`, so
    each trained turn is trained in exactly one window. A turn too long to fit even alone
    gets a window of its own and stays over the limit (the provider then truncates it).
    """
    messages = example.messages
    n_sys = 0
    while n_sys < len(messages) and messages[n_sys].role == "system":
        n_sys += 1
    prefix = [0, *accumulate(billed)]
    base = fixed_cost + prefix[n_sys]

    def cost(start: int, end: int) -> int:  # messages start..end inclusive, plus the system prompt
        return base + prefix[end + 1] - prefix[start]

    targets = [i for i, m in enumerate(messages) if i >= n_sys and m.role == "assistant" and m.weight != 0]
    windows: list[ChatExample] = []
    spans: list[str] = []
    new_from = n_sys
    k = 0
    while k < len(targets):
        end = targets[k]
        while k + 1 < len(targets) and cost(new_from, targets[k + 1]) <= limit:
            k += 1
            end = targets[k]
        start = min(new_from, end)
        if cost(start, end) > limit:  # not even the new turns fit: keep the closest context that does
            start = end
            while start - 1 >= n_sys and cost(start - 1, end) <= limit:
                start -= 1
        else:
            while start - 1 >= n_sys and cost(start - 1, end) <= limit:
                start -= 1
        while start < end and messages[start].role != "user" and start < new_from:
            start += 1  # a window's context starts on a user turn, not mid-exchange
        window = list(messages[:n_sys])
        for i in range(start, end + 1):
            m = messages[i]
            if i < new_from and m.role == "assistant" and m.weight != 0:
                m = replace(m, weight=0)
            window.append(m)
        windows.append(_with(example, window))
        spans.append(f"{start}..{end}")
        new_from = end + 1
        k += 1
    if not windows:
        return [example], []
    dropped = len(messages) - new_from
    detail = f"split into {len(windows)} windows of messages {', '.join(spans)} (each with the system prompt)"
    if dropped:
        detail += f"; dropped {dropped} trailing message(s) after the last trained turn"
    return windows, [Change("split_windows", "over_token_limit", line, None, detail)]
