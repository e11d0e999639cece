"""The pipeline's model-profile stage: an example rendered with the model's own chat template and
tokenizer, what that finds turned into problems, and the token counts the budget uses.

With a profile, the tokens that matter are the profile's (nobody bills a self-hosted model):
`tokens_of` gives `ExampleTokens` from a TrainingView so that limits, windows, statistics and
the report count what the trainer will see. The profile's control tokens (its tokenizer's special
added tokens, such as `<|im_end|>` or `<end_of_turn>`) are turn markers too: spelled in content,
a trainer's tokenizer reads them as those tokens, so they are `role_marker_in_content`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from service.core.accounting import ExampleTokens, MessageCount
from service.core.conversation import ChatExample, Message, image_count, text_of
from service.core.problems import Problem, problem
from service.core.profiles import Finding, ModelProfile
from service.core.view import TrainingView


@lru_cache(maxsize=64)
def special_strings(profile: ModelProfile) -> tuple[str, ...]:
    """The profile's control-token strings (the tokenizer's special added tokens, such as
    `<|im_end|>`; not markup it writes as text, such as `<think>`), longest first."""
    return tuple(sorted(profile.tokenizer.control_tokens, key=lambda s: (-len(s), s)))


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
    starts = {t[0] for t in specials}
    out = []
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant") or i in reported:
            continue
        text = text_of(m)
        if not any(c in text for c in starts):  # substring tests first: the regex is long
            continue
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
    billed = [0] * len(chat.messages)
    trained = [0] * len(chat.messages)
    fixed = 0
    for seg in view.segments:
        n = len(seg.token_ids)
        i = seg.message_index
        if i is None or not 0 <= i < len(billed):
            fixed += n
            continue
        billed[i] += n
        if seg.trained:
            trained[i] += n
    per = [MessageCount(b, t) for b, t in zip(billed, trained, strict=True)]
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
