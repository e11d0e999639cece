"""Fixes: each returns a new example, a record of every change it made, and where each message came from.

Fixes never mutate their input, so the caller can compare before and after (the report counts
trained tokens on both sides). A fix reports `message_index` in terms of the messages it was
given and returns `kept` (for each output message, the index of the input message it derives
from, None for an inserted one) so that `Processor` can chain fixes and still report every
change against the example as the caller sent it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from itertools import accumulate

import msgspec

from service.core.conversation import ChatExample, ContentPart, Message, RefusalPart, TextPart, text_of
from service.core.lint import is_unnormalized, role_marker
from service.core.problems import Change
from service.core.tokens import special_pattern, special_tokens_in

replace = msgspec.structs.replace


Kept = list[int | None] | None  # None: the messages kept their positions
Fixed = tuple[ChatExample, list[Change], Kept]


def _with(example: ChatExample, messages: list[Message]) -> ChatExample:
    return replace(example, messages=messages)


def map_text(m: Message, f: Callable[[str], str]) -> Message:
    """The message with `f` applied to its text (string content, text and refusal parts)."""
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


def _map_messages(
    example: ChatExample,
    line: int | None,
    kind: str,
    code: str,
    fn: Callable[[int, Message], tuple[Message, str] | None],
) -> Fixed:
    """A fix that rewrites some messages in place: `fn` returns the new message and why, or None."""
    messages = list(example.messages)
    changes: list[Change] = []
    for i, m in enumerate(messages):
        done = fn(i, m)
        if done is not None:
            messages[i] = done[0]
            changes.append(Change(kind, code, line, i, done[1]))
    return _with(example, messages), changes, None


def remove_weight_on_non_assistant(example: ChatExample, line: int | None) -> Fixed:
    def fix(i: int, m: Message) -> tuple[Message, str] | None:
        if m.weight is None or m.role == "assistant":
            return None
        return replace(m, weight=None), f"removed weight {m.weight} from a {m.role} message"

    return _map_messages(example, line, "remove_weight", "weight_on_non_assistant", fix)


def remove_special_tokens(example: ChatExample, line: int | None) -> Fixed:
    pattern = special_pattern()

    def fix(i: int, m: Message) -> tuple[Message, str] | None:
        calls = m.tool_calls or []
        found = special_tokens_in(
            " ".join([text_of(m), *(c.function.name + " " + c.function.arguments for c in calls)])
        )
        if not found:
            return None
        fixed = map_text(m, lambda s: pattern.sub("", s))
        if calls:
            clean = [
                replace(
                    c,
                    function=replace(
                        c.function,
                        name=pattern.sub("", c.function.name),
                        arguments=pattern.sub("", c.function.arguments),
                    ),
                )
                for c in calls
            ]
            fixed = replace(fixed, tool_calls=clean)
        return fixed, f"removed {', '.join(found)}"

    return _map_messages(example, line, "remove_special_tokens", "special_token_text", fix)


def cut_at_role_marker(example: ChatExample, line: int | None) -> Fixed:
    """Cut a user or assistant message at the first turn marker that follows some of its text
    (`lint.role_marker`): what comes after is another turn a conversion leaked into this one."""

    def fix(i: int, m: Message) -> tuple[Message, str] | None:
        if m.role not in ("user", "assistant") or m.content is None:
            return None
        if isinstance(m.content, str):
            found = role_marker(m.content)
            if found is None:
                return None
            kept = m.content[: found.start()].rstrip()
            removed = len(m.content) - len(kept)
            return replace(m, content=kept), f"cut at {found.group()!r}, removing {removed} characters"
        # content parts: the marker is looked for in the text so far; later parts go with the cut
        parts: list[ContentPart] = []
        before = ""
        for j, p in enumerate(m.content):
            text = p.text if type(p) is TextPart else p.refusal if type(p) is RefusalPart else None
            found = None if text is None else role_marker(before + text)
            if text is None or found is None:
                parts.append(p)
                before += text or ""
                continue
            kept = (before + text)[: found.start()][len(before) :].rstrip()
            parts.append(TextPart(kept) if type(p) is TextPart else RefusalPart(kept))
            dropped = len(m.content) - j - 1
            detail = f"cut at {found.group()!r}, removing {len(text) - len(kept)} characters"
            if dropped:
                detail += f" and the {dropped} content part(s) after it"
            return replace(m, content=parts), detail
        return None

    return _map_messages(example, line, "cut_at_role_marker", "role_marker_in_content", fix)


def normalize_text(example: ChatExample, line: int | None) -> Fixed:
    def fix(i: int, m: Message) -> tuple[Message, str] | None:
        if not is_unnormalized(text_of(m)):
            return None
        return (
            map_text(m, lambda s: unicodedata.normalize("NFC", s).strip()),
            f"normalized the {m.role} message to NFC and stripped surrounding whitespace",
        )

    return _map_messages(example, line, "normalize_text", "unnormalized_text", fix)


def train_last_only(example: ChatExample, line: int | None) -> Fixed:
    """`weight: 0` on every assistant message but the last."""
    last = max((i for i, m in enumerate(example.messages) if m.role == "assistant"), default=-1)

    def fix(i: int, m: Message) -> tuple[Message, str] | None:
        if m.role != "assistant" or i == last or m.weight == 0:
            return None
        return replace(m, weight=0), "set weight 0: only the final assistant turn is trained"

    return _map_messages(example, line, "train_last_only", None, fix)  # type: ignore[arg-type]


def drop_empty(example: ChatExample, line: int | None) -> Fixed:
    keep: list[Message] = []
    kept: list[int | None] = []
    changes: list[Change] = []
    for i, m in enumerate(example.messages):
        only_text = isinstance(m.content, str) or all(type(p) is TextPart for p in m.content or [])
        empty = m.content is not None and only_text and not text_of(m).strip() and not m.tool_calls
        if empty and m.role != "tool":
            changes.append(
                Change("drop_empty_message", "empty_content", line, i, f"dropped an empty {m.role} message")
            )
        else:
            keep.append(m)
            kept.append(i)
    return _with(example, keep), changes, kept


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


def merge_consecutive(example: ChatExample, line: int | None) -> Fixed:
    """Merge runs of user (or assistant) messages; a merged assistant turn is trained if any part was."""
    out: list[Message] = []
    kept: list[int | None] = []
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
                    f"merged into the {m.role} message before it, joined by a blank line",
                )
            )
        else:
            out.append(m)
            kept.append(i)
    return _with(example, out), changes, kept


def move_system_first(example: ChatExample, line: int | None) -> Fixed:
    messages = example.messages
    order = [i for i, m in enumerate(messages) if m.role == "system"]
    order += [i for i, m in enumerate(messages) if m.role != "system"]
    changes = [
        Change("move_system_first", "system_not_first", line, i, "moved the system message to the front")
        for i, m in enumerate(messages)
        if m.role == "system" and any(x.role != "system" for x in messages[:i])
    ]
    return _with(example, [messages[i] for i in order]), changes, list(order)


def insert_system(example: ChatExample, line: int | None, prompt: str) -> Fixed:
    if any(m.role == "system" for m in example.messages):
        return example, [], None
    change = Change(
        "insert_system_prompt",
        "no_system_message",
        line,
        None,
        f"inserted the configured system prompt ({len(prompt)} characters) at the front",
    )
    kept: list[int | None] = [None, *range(len(example.messages))]
    return _with(example, [Message("system", prompt), *example.messages]), [change], kept


def drop_leading_assistant(example: ChatExample, line: int | None) -> Fixed:
    out: list[Message] = []
    kept: list[int | None] = []
    changes: list[Change] = []
    seen_user = False
    for i, m in enumerate(example.messages):
        seen_user = seen_user or m.role == "user"
        if not seen_user and m.role in ("assistant", "tool"):
            changes.append(
                Change(
                    "drop_leading_assistant",
                    "assistant_first",
                    line,
                    i,
                    f"dropped a {m.role} message before the first user message",
                )
            )
            continue
        out.append(m)
        kept.append(i)
    return _with(example, out), changes, kept


def drop_trailing(example: ChatExample, line: int | None) -> Fixed:
    messages = example.messages
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=len(messages) - 1)
    changes = [
        Change(
            "drop_trailing",
            "trailing_non_assistant",
            line,
            i,
            f"dropped a trailing {m.role} message (billed, never trained)",
        )
        for i, m in enumerate(messages[last + 1 :], last + 1)
    ]
    return _with(example, list(messages[: last + 1])), changes, list(range(last + 1))


def split_windows(
    example: ChatExample, line: int | None, billed: list[int], fixed_cost: int, limit: int
) -> tuple[list[ChatExample], list[Change]]:
    """Split an over-long conversation into windows that each fit `limit` tokens.

    `billed` is each message's billed tokens; `fixed_cost` what every window pays regardless
    (tool definitions, the reply priming). Leading system messages go into every window.
    Each window ends on a trained assistant turn and holds as many new turns as fit, then as
    much earlier context as fits; it starts on a user message (never mid-exchange), or when
    no user message fits on the first message that is not a tool result (so no result loses
    its call).
    Assistant turns that are only context get `weight: 0`, so each trained turn is trained
    in exactly one window. A turn too long to fit even alone gets a window of its own and
    stays over the limit (the provider then truncates it).
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
        # as much earlier context as fits (all of the new turns, when they fit) ...
        start = end
        while start - 1 >= n_sys and cost(start - 1, end) <= limit:
            start -= 1
        # ... then forward to a user turn, never past the first new turn: when the new turns do
        # not all fit, only untrained messages lie between them and `end`, so skipping is safe
        last_start = min(new_from, end) if start <= new_from else end
        first_user = next((i for i in range(start, last_start + 1) if messages[i].role == "user"), None)
        if first_user is not None:
            start = first_user
        while messages[start].role == "tool" and start < end:  # never open on a result whose call is left out
            start += 1  # (tool results are never trained: skipping one loses no training)
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


def _cut_specials(text: str, pattern: re.Pattern[str]) -> tuple[str, str] | None:
    """`text` cut at the first control-token string that follows some text, those that open it
    removed; None when it has none. Also says what was done."""
    removed: list[str] = []
    while True:
        found = pattern.search(text)
        if found is None:
            break
        if text[: found.start()].strip():
            kept = text[: found.start()].rstrip()
            what = f"cut at {found.group()!r}, removing {len(text) - len(kept)} characters"
            return kept, "; ".join([*removed, what])
        removed.append(f"removed {found.group()!r} at its start")
        text = text[found.end() :].lstrip()
    return (text, "; ".join(removed)) if removed else None


def cut_at_special_string(example: ChatExample, line: int | None, pattern: re.Pattern[str]) -> Fixed:
    """With a model profile: a user or assistant message that spells one of the profile's control
    tokens (`pattern`) is cut there, as at a leaked turn marker; one that opens the text is
    removed, since the trainer's tokenizer would read it as that token."""

    def fix(i: int, m: Message) -> tuple[Message, str] | None:
        if m.role not in ("user", "assistant") or m.content is None:
            return None
        if isinstance(m.content, str):
            done = _cut_specials(m.content, pattern)
            return None if done is None else (replace(m, content=done[0]), done[1])
        parts: list[ContentPart] = []
        details: list[str] = []
        for j, p in enumerate(m.content):
            text = p.text if type(p) is TextPart else p.refusal if type(p) is RefusalPart else None
            done = None if text is None else _cut_specials(text, pattern)
            if done is None:
                parts.append(p)
                continue
            parts.append(TextPart(done[0]) if type(p) is TextPart else RefusalPart(done[0]))
            details.append(done[1])
            if done[1].split("; ")[-1].startswith("cut at"):
                if j + 1 < len(m.content):
                    details.append(f"dropped the {len(m.content) - j - 1} content part(s) after it")
                break
        if not details:
            return None
        return replace(m, content=parts), "; ".join(details)

    return _map_messages(example, line, "cut_at_role_marker", "role_marker_in_content", fix)
