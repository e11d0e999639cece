"""The pipeline's model-profile stage: an example rendered with the model's own chat template and
tokenizer, what that finds turned into problems, and the token counts the budget uses.

With a profile, the tokens that matter are the profile's (nobody bills a self-hosted model):
`tokens_of` gives `ExampleTokens` from a TrainingView so that limits, windows, statistics and
the report count what the trainer will see. The profile's own special-token strings (those its
template writes, such as `<|im_end|>` or `<end_of_turn>`) are turn markers too: a trainer's
tokenizer reads them in content as control tokens, so they are `role_marker_in_content`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from service.core.accounting import ExampleTokens, MessageCount
from service.core.conversation import ChatExample, Message, image_count, text_of
from service.core.problems import Problem, problem
from service.core.profiles import Finding, ModelProfile
from service.core.view import TrainingView

# Spellings of control tokens in chat templates: `<|im_end|>`, `<｜Assistant｜>`, `<start_of_turn>`,
# `</s>`, `[INST]`. Only those the profile's tokenizer knows as one token are kept.
_CANDIDATE = re.compile(r"<\|[^|<>\s]{1,48}\|>|<｜[^｜<>]{1,48}｜>|</?[a-z_]{1,32}>|\[/?[A-Z_]{2,16}\]")
# Tags some models write inside their own replies (reasoning, tool calls): added tokens, but part
# of the content a model is trained to produce, never a turn boundary.
_CONTENT_TAGS = re.compile(r"</?(think|thinking|tool_call|tool_response|tool_calls|answer|reasoning)>")


@lru_cache(maxsize=64)
def special_strings(profile: ModelProfile) -> tuple[str, ...]:
    """The control-token strings of a profile: what its template writes (and its bos/eos) that the
    tokenizer encodes as a single token, longest first, reasoning/tool-call tags left out."""
    found = set(_CANDIDATE.findall(profile.chat_template))
    found.update(t for t in (profile.bos_token, profile.eos_token) if t)
    out = []
    for s in found:
        if _CONTENT_TAGS.fullmatch(s) or profile.tokenizer.token_to_id(s) is None:
            continue
        ids, _ = profile.tokenizer.encode(s)
        if len(ids) == 1:
            out.append(s)
    return tuple(sorted(out, key=lambda s: (-len(s), s)))


@lru_cache(maxsize=64)
def special_pattern(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    if not specials:
        return None
    return re.compile("|".join(re.escape(s) for s in specials))


def special_in_content(
    messages: list[Message], line: int | None, specials: tuple[str, ...], reported: set[int | None]
) -> list[Problem]:
    """`role_marker_in_content` for every user or assistant message that spells one of the
    profile's control tokens anywhere (`reported`: message indices that already have one)."""
    pattern = special_pattern(specials)
    if pattern is None:
        return []
    out = []
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant") or i in reported:
            continue
        text = text_of(m)
        found = pattern.search(text)
        if found is not None:
            out.append(
                problem(
                    "role_marker_in_content",
                    f"{m.role} message {i} contains {found.group()!r} at character {found.start()}, "
                    "which the model's tokenizer reads as its control token, not as text",
                    line,
                    i,
                )
            )
    return out


def finding_problem(f: Finding, line: int | None) -> Problem:
    return problem(f.code, f.message, line, f.message_index)


def tokens_of(view: TrainingView, chat: ChatExample) -> ExampleTokens:
    """The profile's token counts of one rendered example: every token of the sequence counts
    (billed == total), per message by the segments' message index; tokens of no message (a
    BOS, injected text, a generation prompt) are the fixed cost every window pays."""
    per = [MessageCount(0, 0) for _ in chat.messages]
    fixed = 0
    for seg in view.segments:
        n = len(seg.token_ids)
        if seg.message_index is None or not 0 <= seg.message_index < len(per):
            fixed += n
            continue
        c = per[seg.message_index]
        c.billed += n
        if seg.trained:
            c.trained += n
    images = sum(image_count(m) for m in chat.messages)
    return ExampleTokens(view.total_tokens, view.trained_tokens, len(chat.messages), per, fixed, images)


def truncation_loss_of(view: TrainingView, limit: int) -> int:
    """Trained tokens a trainer's truncation to `limit` tokens would cut, counted on the sequence."""
    lost = 0
    position = 0
    for seg in view.segments:
        n = len(seg.token_ids)
        if seg.trained and position + n > limit:
            lost += min(n, position + n - limit)
        position += n
    return lost
