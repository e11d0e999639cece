"""The checks targets share: each finds what a platform refuses, asks the policy, and applies the
code's fix (the repair functions of `service.core.repair`, as the pipeline's own fixes do)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from service.core.conversation import ChatExample, ImagePart, Message, RefusalPart, TextPart, text_of
from service.core.repair import (
    drop_leading_assistant,
    drop_trailing,
    map_text,
    merge_consecutive,
    move_system_first,
)
from service.core.targets.base import Context, _Stop

replace = msgspec.structs.replace


def _roles(example: ChatExample) -> list[str]:
    return [m.role for m in example.messages]


def _repaired(example: ChatExample, ctx: Context) -> ChatExample:
    """The role-order fix: system first, same roles merged, a leading assistant and trailing
    non-assistant messages dropped."""
    for step in (move_system_first, merge_consecutive, drop_leading_assistant, drop_trailing):
        example = step(example, ctx.line)[0]
    if not any(m.role == "assistant" for m in example.messages):
        raise _Stop("dropped")  # nothing left to train
    return example


def no_consecutive_roles(example: ChatExample, ctx: Context, target: str) -> ChatExample:
    """Two messages in a row with the same role (tool results answering parallel calls excepted)."""
    roles = _roles(example)
    for i in range(1, len(roles)):
        if roles[i] == roles[i - 1] and roles[i] != "tool":
            ctx.found("target_role_order", f"{target} rejects two {roles[i]} messages in a row", i)
            return merge_consecutive(example, ctx.line)[0]
    return example


def system_first(example: ChatExample, ctx: Context, target: str) -> ChatExample:
    roles = _roles(example)
    seen_other = False
    for i, role in enumerate(roles):
        if role != "system":
            seen_other = True
        elif seen_other:
            ctx.found("target_role_order", f"{target} needs system messages first", i)
            return move_system_first(example, ctx.line)[0]
    return example


def strict_alternation(example: ChatExample, ctx: Context, target: str) -> ChatExample:
    """After the system messages: user first, assistant last, user and assistant alternating."""
    problem = _alternation_problem(example)
    if problem is None:
        return example
    ctx.found("target_role_order", f"{target} {problem[0]}", problem[1])
    fixed = _repaired(example, ctx)
    again = _alternation_problem(fixed)
    if again is not None:  # the fix cannot make it alternate (e.g. a tool message between)
        ctx.found("target_role_order", f"after the fix, {target} {again[0]}", None)
        raise _Stop("failed")
    return fixed


def _alternation_problem(example: ChatExample) -> tuple[str, int | None] | None:
    messages = example.messages
    first = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    late = next((i for i in range(first, len(messages)) if messages[i].role == "system"), None)
    if late is not None:
        return "needs system messages first", late
    turns = [(i, m.role) for i, m in enumerate(messages) if m.role != "system"]
    if not turns or turns[0][1] != "user":
        return "needs the conversation to start with a user message", turns[0][0] if turns else None
    if turns[-1][1] != "assistant":
        return "needs the conversation to end with an assistant message", turns[-1][0]
    for k, (i, role) in enumerate(turns):
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            return f"needs user and assistant messages to alternate (message {i} is {role})", i
    return None


def has_weight_zero(example: ChatExample) -> int | None:
    return next((i for i, m in enumerate(example.messages) if m.role == "assistant" and m.weight == 0), None)


def without_weights(example: ChatExample) -> ChatExample:
    return replace(example, messages=[replace(m, weight=None) for m in example.messages])


def no_weights(example: ChatExample, ctx: Context, target: str) -> list[ChatExample]:
    """A target without per-message weights: `weight: 0` is lost (keep) or the example is split
    into one example per trained assistant turn (fix)."""
    index = has_weight_zero(example)
    if index is None:
        return [without_weights(example)]
    act = ctx.found(
        "target_weight_unsupported", f"{target} has no per-message weights: this turn would be trained", index
    )
    if act.value == "keep":
        return [without_weights(example)]
    out = [
        without_weights(replace(example, messages=example.messages[: i + 1]))
        for i, m in enumerate(example.messages)
        if m.role == "assistant" and m.weight != 0
    ]
    if not out:
        raise _Stop("dropped")
    return out


def _tool_index(example: ChatExample, legacy_only: bool) -> int | None:
    for i, m in enumerate(example.messages):
        if m.function_call is not None or m.role == "function":
            return i
        if not legacy_only and (m.tool_calls or m.role == "tool"):
            return i
    return None


def no_tools(example: ChatExample, ctx: Context, target: str, *, legacy_only: bool = False) -> ChatExample:
    """Tools the target cannot express (all of them, or only the deprecated function calling):
    the fix keeps what came before the first call as the example."""
    index = _tool_index(example, legacy_only)
    has_defs = bool(example.functions) if legacy_only else bool(example.tools or example.functions)
    if index is None and not has_defs:
        return example
    what = "function calling (`functions`, `function_call`)" if legacy_only else "tool definitions or calls"
    ctx.found("target_tool_calls_unsupported", f"{target} cannot express {what}", index)
    messages = example.messages if index is None else example.messages[:index]
    cut = (
        replace(example, messages=list(messages), functions=None)
        if legacy_only
        else ChatExample(messages=list(messages))
    )
    cut = drop_trailing(cut, ctx.line)[0]
    if not cut.messages or cut.messages[-1].role != "assistant":
        raise _Stop("dropped")
    return cut


def no_reserved(example: ChatExample, ctx: Context, target: str, reserved: tuple[str, ...]) -> ChatExample:
    if not reserved:
        return example
    messages = list(example.messages)
    for i, m in enumerate(messages):
        text = text_of(m)
        hits = [s for s in reserved if s in text]
        if not hits:
            continue
        ctx.found("target_reserved_string", f"{target} reserves {', '.join(map(repr, hits))}", i)

        def cut(t: str, hits: list[str] = hits) -> str:
            for s in hits:
                t = t.replace(s, "")
            return t

        messages[i] = map_text(m, cut)
    return replace(example, messages=messages)


def images_accepted(
    example: ChatExample, ctx: Context, target: str, accept: Callable[[str], bool]
) -> ChatExample:
    """Image parts whose URL the target cannot take: the fix drops them."""
    messages = list(example.messages)
    for i, m in enumerate(messages):
        if isinstance(m.content, str) or m.content is None:
            continue
        bad = [p for p in m.content if isinstance(p, ImagePart) and not accept(p.image_url.url)]
        if not bad:
            continue
        ctx.found("target_unsupported_content", f"{target} cannot take this image ({_short(bad[0])})", i)
        kept = [p for p in m.content if not (isinstance(p, ImagePart) and not accept(p.image_url.url))]
        messages[i] = replace(m, content=kept or "")
    return replace(example, messages=messages)


def _short(part: ImagePart) -> str:
    url = part.image_url.url
    return url if len(url) <= 40 else url[:37] + "..."


def flat_text(m: Message) -> Message:
    """Content as one string when it holds only text (refusal parts become text)."""
    if m.content is None or isinstance(m.content, str):
        return m
    if all(isinstance(p, TextPart | RefusalPart) for p in m.content):
        return replace(m, content=text_of(m))
    return replace(
        m,
        content=[TextPart(p.refusal) if isinstance(p, RefusalPart) else p for p in m.content],
    )
