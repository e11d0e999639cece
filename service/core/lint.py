"""Every rule on a decoded example, schema and structure alike, in one pass over its messages.

Decoding (`formats`, `schema_check`) already enforced types and keys; what is left are the
rules a type cannot express (roles, which role may carry what, weights, tool call ids,
images, special-token text) and the structural findings (role order, system prompts,
trailing turns, empty or unnormalized text). They share one loop because validation runs at
the tokenizer's speed only if the Python work per message stays small.
"""

from __future__ import annotations

import re
import unicodedata

from service.core.conversation import (
    ROLES,
    ChatExample,
    Example,
    ImagePart,
    Message,
    PreferenceExample,
    RefusalPart,
    TextPart,
    image_count,
    text_of,
)
from service.core.problems import ROLE_MARKERS, Problem, problem
from service.core.tokens import special_tokens_in

MAX_IMAGES = 10
_TURN_ROLES = frozenset({"user", "assistant"})
_MARKER = re.compile("|".join(re.escape(m) for m in ROLE_MARKERS))
# Every marker starts with one of these (a test checks), so text with none of them is not searched
MARKER_STARTS = ("\n", "<", "[")
_MARKERS_BY_START = tuple((c, tuple(m for m in ROLE_MARKERS if m[0] == c)) for c in MARKER_STARTS)


def _has_marker(text: str) -> bool:
    """Substring tests, far cheaper than the regex: a marker is looked for only when its first
    character (a memchr) is in the text."""
    for start, markers in _MARKERS_BY_START:
        if start in text:
            for marker in markers:
                if marker in text:
                    return True
    return False


def role_marker(text: str) -> re.Match[str] | None:
    """The first turn marker in `text` that has some text before it (a marker that opens the
    text is that text's own prefix, not a leaked turn)."""
    if not _has_marker(text):
        return None
    for found in _MARKER.finditer(text):
        if text[: found.start()].strip():
            return found
    return None


def is_unnormalized(text: str) -> bool:
    """Leading/trailing whitespace, or not Unicode NFC (ASCII is always NFC)."""
    if not text:
        return False
    if text[0].isspace() or text[-1].isspace():
        return True
    return not text.isascii() and not unicodedata.is_normalized("NFC", text)


def _parts(
    m: Message, parts: list[TextPart | ImagePart | RefusalPart], i: int, line: int | None
) -> list[Problem]:
    out: list[Problem] = []
    if not parts:
        out.append(
            problem("missing_content", f"{m.role} message {i} has an empty list of content parts", line, i)
        )
    kinds = {type(p) for p in parts}
    if ImagePart in kinds and m.role != "user":
        out.append(
            problem("invalid_content", f"{m.role} message {i} has an image; only user messages may", line, i)
        )
    if RefusalPart in kinds and (m.role != "assistant" or len(parts) != 1):
        out.append(
            problem(
                "invalid_content",
                f"message {i}: a refusal part must be the only part of an assistant message",
                line,
                i,
            )
        )
    if m.role in ("system", "tool") and kinds - {TextPart}:
        out.append(problem("invalid_content", f"{m.role} message {i} may only have text parts", line, i))
    return out


def _unknown_roles(messages: list[Message], line: int | None, offset: int) -> list[Problem]:
    out = []
    for i, m in enumerate(messages, offset):
        if m.role not in ROLES:
            what = f"has unknown role {m.role!r}" if m.role else "has no role"
            out.append(
                problem(
                    "unknown_role",
                    f"message {i} {what} (expected system, user, assistant, tool or function)",
                    line,
                    i,
                )
            )
    return out


class _Calls:
    """Tool-call bookkeeping across one conversation: which call ids have been made so far."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.untrained_assistants = 0


def _extras(m: Message, i: int, line: int | None, calls: _Calls, out: list[Problem]) -> None:
    """Rules about weight, tool calls and tool_call_id: only for messages that carry any of them."""
    role = m.role
    if m.weight is not None:
        if role != "assistant":
            out.append(
                problem(
                    "weight_on_non_assistant",
                    f"{role} message {i} has `weight`; only assistant messages may",
                    line,
                    i,
                )
            )
        elif m.weight == 0:
            calls.untrained_assistants += 1
        elif m.weight != 1:
            out.append(
                problem("invalid_weight", f"message {i} has weight {m.weight}; it must be 0 or 1", line, i)
            )
    if m.tool_calls or m.function_call:
        if role != "assistant":
            out.append(
                problem(
                    "invalid_field", f"{role} message {i} has tool calls; only the assistant may", line, i
                )
            )
        for call in m.tool_calls or ():
            calls.ids.add(call.id)
            found = special_tokens_in(call.function.name + " " + call.function.arguments)
            if found:
                out.append(
                    problem(
                        "special_token_text",
                        f"message {i} has special-token text {', '.join(found)} in a tool call",
                        line,
                        i,
                    )
                )
    if role == "tool":
        if not m.tool_call_id:
            out.append(problem("missing_tool_call_id", f"tool message {i} has no `tool_call_id`", line, i))
        elif m.tool_call_id not in calls.ids:
            out.append(
                problem(
                    "unmatched_tool_call_id",
                    f"tool message {i} answers call {m.tool_call_id!r}, "
                    "which no earlier assistant message made",
                    line,
                    i,
                )
            )
    elif m.tool_call_id is not None:
        out.append(
            problem(
                "invalid_field", f"{role} message {i} has `tool_call_id`; only tool messages may", line, i
            )
        )


def _text(text: str, role: str, i: int, line: int | None, out: list[Problem], tool_calls: bool) -> None:
    """Special-token spellings, turn markers, empty text, surrounding whitespace, NFC."""
    if role in _TURN_ROLES and ("\n" in text or "<" in text or "[" in text):
        marker = role_marker(text)
        if marker is not None:
            out.append(
                problem(
                    "role_marker_in_content",
                    f"{role} message {i} contains {marker.group()!r} at character {marker.start()}, "
                    "which looks like the start of another turn",
                    line,
                    i,
                )
            )
    if "<|" in text:
        found = special_tokens_in(text)
        if found:
            out.append(
                problem(
                    "special_token_text",
                    f"message {i} contains special-token text {', '.join(found)}",
                    line,
                    i,
                )
            )
    if not text or text[0].isspace() or text[-1].isspace():
        if not text.strip():
            if not (tool_calls and role == "assistant"):
                out.append(problem("empty_content", f"{role} message {i} has empty text", line, i))
        else:
            out.append(
                problem(
                    "unnormalized_text", f"{role} message {i} has leading or trailing whitespace", line, i
                )
            )
    elif not text.isascii() and not unicodedata.is_normalized("NFC", text):
        out.append(problem("unnormalized_text", f"{role} message {i} is not Unicode NFC", line, i))


def lint_messages(
    messages: list[Message], line: int | None, *, offset: int = 0, dpo_prompt: bool = False
) -> list[Problem]:
    """All findings for one message list. `offset` shifts indices (DPO replies follow the prompt);
    `dpo_prompt`: the list is a preference prompt, which ends on the user by design.

    Counting roles uses list methods (C speed); the loop does only what needs each message."""
    out: list[Problem] = []
    roles = [m.role for m in messages]
    n_system = roles.count("system")
    n_user = roles.count("user")
    n_assistant = roles.count("assistant")
    if n_system + n_user + n_assistant + roles.count("tool") + roles.count("function") != len(roles):
        out += _unknown_roles(messages, line, offset)
    first_turn = 0 if not n_system else next((i for i, r in enumerate(roles) if r != "system"), -1)
    if n_system and (n_system > 1 or (first_turn >= 0 and roles.index("system") > first_turn)):
        seen = 0
        for i, r in enumerate(roles):
            if r == "system":
                seen += 1
                if 0 <= first_turn < i:
                    out.append(
                        problem(
                            "system_not_first",
                            f"system message {i + offset} comes after other messages",
                            line,
                            i + offset,
                        )
                    )
                elif seen == 2:
                    out.append(
                        problem(
                            "system_repeated",
                            f"message {i + offset} is a second system message",
                            line,
                            i + offset,
                        )
                    )
    calls: _Calls | None = None
    images = 0
    previous = ""
    for i, m in enumerate(messages, offset):
        role = m.role
        if role == previous and role in _TURN_ROLES:
            out.append(
                problem(
                    "consecutive_same_role", f"messages {i - 1} and {i} are both {role} messages", line, i
                )
            )
        previous = role
        if (
            m.weight is not None
            or m.tool_calls is not None
            or m.tool_call_id is not None
            or m.function_call is not None
            or role == "tool"
        ):
            calls = calls or _Calls()
            _extras(m, i, line, calls, out)
        content = m.content
        if type(content) is str:
            text = content
        elif content is None:
            if not (role == "assistant" and (m.tool_calls or m.function_call)):
                out.append(problem("missing_content", f"{role} message {i} has no content", line, i))
            continue
        else:
            out += _parts(m, content, i, line)  # type: ignore[arg-type]
            images += image_count(m)
            if all(type(p) is ImagePart for p in content):
                continue  # image-only: no text to judge
            text = text_of(m)
        # the common case, decided without a call: ASCII (an O(1) flag), nothing to strip (strip()
        # returns the very same object then), none of `\n`, `<` or `[` (what special tokens and
        # turn markers start with)
        if (
            text
            and text.isascii()
            and text.strip() is text
            and "<" not in text
            and "\n" not in text
            and "[" not in text
        ):
            continue
        _text(text, role, i, line, out, bool(m.tool_calls))

    if images > MAX_IMAGES:
        out.append(
            problem(
                "too_many_images", f"the example has {images} images; at most {MAX_IMAGES} are allowed", line
            )
        )
    if dpo_prompt:
        return out
    if n_assistant == 0:
        out.append(problem("no_assistant_message", "the example has no assistant message", line))
    elif calls is not None and n_assistant == calls.untrained_assistants:
        out.append(
            problem(
                "no_trainable_assistant", "every assistant message has weight 0: nothing is trained", line
            )
        )
    if first_turn >= 0 and roles[first_turn] == "assistant":
        index = first_turn + offset
        out.append(
            problem(
                "assistant_first",
                f"the conversation starts with the assistant (message {index})",
                line,
                index,
            )
        )
    if n_user == 0:
        out.append(problem("no_user_message", "the example has no user message", line))
    if n_system == 0:
        out.append(problem("no_system_message", "the example has no system message", line))
    if n_assistant and roles[-1] != "assistant":
        first = len(roles) - roles[::-1].index("assistant") + offset
        last = offset + len(roles) - 1
        which = f"message {last} comes" if first == last else f"messages {first}..{last} come"
        out.append(
            problem(
                "trailing_non_assistant",
                f"{which} after the last assistant message: billed, never trained",
                line,
                first,
            )
        )
    return out


def lint_chat(example: ChatExample, line: int | None) -> list[Problem]:
    if not example.messages:
        return [problem("invalid_messages", "`messages` is empty; it needs at least one message", line)]
    return lint_messages(example.messages, line)


def lint_preference(example: PreferenceExample, line: int | None) -> list[Problem]:
    """The prompt as a conversation that ends on the user, and each reply as one assistant message."""
    prompt = example.input.messages
    if not prompt:
        return [problem("invalid_messages", "`input.messages` is empty; it needs at least one message", line)]
    out = lint_messages(prompt, line, dpo_prompt=True)
    if not any(m.role == "user" for m in prompt):
        out.append(problem("no_user_message", "the prompt has no user message", line))
    if not any(m.role == "system" for m in prompt):
        out.append(problem("no_system_message", "the prompt has no system message", line))
    n = len(prompt)
    for key, replies in (
        ("preferred_output", example.preferred_output),
        ("non_preferred_output", example.non_preferred_output),
    ):
        if len(replies) != 1 or replies[0].role != "assistant":
            out.append(
                problem("invalid_preference", f"`{key}` must hold exactly one assistant message", line)
            )
            continue
        reply = [
            p for p in lint_messages(replies, line, offset=n, dpo_prompt=True) if p.code != "system_not_first"
        ]
        out.extend(reply)
    return out


def lint(example: Example, line: int | None) -> list[Problem]:
    """Every schema and structure finding for one example."""
    if isinstance(example, ChatExample):
        return lint_chat(example, line)
    return lint_preference(example, line)
