"""The structure layer: conversations the schema accepts but that probably do not train as meant.

One pass over the messages; every finding names the message it is about.
"""

from __future__ import annotations

import unicodedata

from service.core.conversation import ChatExample, Message, TextPart, text_of
from service.core.problems import Problem, problem

_TURN_ROLES = ("user", "assistant")


def is_unnormalized(text: str) -> bool:
    if not text:
        return False
    return text[0].isspace() or text[-1].isspace() or not unicodedata.is_normalized("NFC", text)


def _has_text_content(m: Message) -> bool:
    content = m.content
    if content is None:
        return False
    if type(content) is str:
        return True
    return any(type(p) is TextPart for p in content)


def check_structure(example: ChatExample, line: int | None, *, preference: bool = False) -> list[Problem]:
    """Structural findings for one conversation (for DPO: the prompt plus the preferred reply)."""
    out: list[Problem] = []
    messages = example.messages
    n_system = n_user = n_assistant = n_trainable = 0
    seen_non_system = False
    first_turn_role: str | None = None
    call_ids: set[str] = set()
    previous: str | None = None
    for i, m in enumerate(messages):
        role = m.role
        if role == "system":
            n_system += 1
            if seen_non_system:
                out.append(
                    problem("system_not_first", f"system message {i} comes after other messages", line, i)
                )
            elif n_system == 2:
                out.append(problem("system_repeated", f"message {i} is a second system message", line, i))
        else:
            seen_non_system = True
            if first_turn_role is None:
                first_turn_role = role
        if role == "user":
            n_user += 1
        elif role == "assistant":
            n_assistant += 1
            if m.weight != 0:
                n_trainable += 1
            for call in m.tool_calls or ():
                call_ids.add(call.id)
        elif role == "tool" and m.tool_call_id and m.tool_call_id not in call_ids:
            out.append(
                problem(
                    "unmatched_tool_call_id",
                    f"tool message {i} answers call {m.tool_call_id!r}, "
                    "which no earlier assistant message made",
                    line,
                    i,
                )
            )
        if role == previous and role in _TURN_ROLES:
            out.append(
                problem(
                    "consecutive_same_role", f"messages {i - 1} and {i} are both {role} messages", line, i
                )
            )
        previous = role
        if _has_text_content(m):
            text = text_of(m)
            if not text.strip():
                if not (role == "assistant" and m.tool_calls):
                    out.append(problem("empty_content", f"{role} message {i} has empty text", line, i))
            elif is_unnormalized(text):
                out.append(
                    problem(
                        "unnormalized_text",
                        f"{role} message {i} has leading/trailing whitespace or is not Unicode NFC",
                        line,
                        i,
                    )
                )
    if n_assistant == 0:
        out.append(problem("no_assistant_message", "the example has no assistant message", line))
    elif n_trainable == 0:
        out.append(
            problem(
                "no_trainable_assistant", "every assistant message has weight 0: nothing is trained", line
            )
        )
    if first_turn_role == "assistant" and not preference:
        index = next(i for i, m in enumerate(messages) if m.role != "system")
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
    if n_assistant and messages[-1].role != "assistant":
        first_trailing = max(i for i, m in enumerate(messages) if m.role == "assistant") + 1
        last = len(messages) - 1
        which = (
            f"message {last} comes" if first_trailing == last else f"messages {first_trailing}..{last} come"
        )
        out.append(
            problem(
                "trailing_non_assistant",
                f"{which} after the last assistant message: billed, never trained",
                line,
                first_trailing,
            )
        )
    return out
