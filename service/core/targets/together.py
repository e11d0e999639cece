"""`together`: Together AI's conversational and preference formats.

Chat lines are OpenAI-style `messages` (system, user, assistant, tool) with the integer `weight`
0/1 on assistant messages and `tools`; two messages in a row with the same role are rejected
(`target_role_order`), and an example's messages are either all text or all content lists (so a
conversation with an image has every content as a list). Images must be base64 data URLs (JPEG,
PNG, WEBP). Preference lines are OpenAI's DPO shape, whose prompt must not end on the assistant.
The deprecated `functions` / `function_call` have no equivalent (`target_tool_calls_unsupported`);
a line has no other top-level key (the SDK rejects one), so `parallel_tool_calls` is left out.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import msgspec

from service.core.conversation import ChatExample, Message, PreferenceExample, TextPart
from service.core.repair import merge_consecutive
from service.core.targets import checks
from service.core.targets.base import Context, Kind, Rule, Target, _Stop

replace = msgspec.structs.replace
_IMAGE_PREFIXES = tuple(f"data:image/{f};base64," for f in ("jpeg", "png", "webp"))


def data_url(url: str) -> bool:
    return url.startswith(_IMAGE_PREFIXES)


class Together(Target):
    name = "together"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"chat", "preference"})
    rules = (
        Rule(
            "target_role_order",
            "no two messages in a row with the same role; a preference prompt not ending on the assistant",
        ),
        Rule("target_tool_calls_unsupported", "no deprecated `functions` / `function_call`"),
        Rule("target_unsupported_content", "images only as base64 JPEG, PNG or WEBP data URLs"),
        Rule("target_example_count", "at least 1 example"),
    )
    upload_hint = "`together files check train.jsonl && together files upload train.jsonl`"

    def adapt_chat(self, example: ChatExample, ctx: Context) -> list[ChatExample]:
        example = checks.no_tools(example, ctx, self.name, legacy_only=True)
        example = checks.images_accepted(example, ctx, self.name, data_url)
        example = checks.no_consecutive_roles(example, ctx, self.name)
        # its files take `messages` and `tools` only: the parallel-calls hint has no column
        return [_uniform(replace(example, parallel_tool_calls=None))]

    def adapt_preference(self, example: PreferenceExample, ctx: Context) -> PreferenceExample:
        prompt = checks.no_tools(_prompt(example), ctx, self.name, legacy_only=True)
        prompt = checks.images_accepted(prompt, ctx, self.name, data_url)
        prompt = ends_on_prompt(prompt, ctx, self.name)
        roles = [m.role for m in prompt.messages]
        if any(a == b and a != "tool" for a, b in itertools.pairwise(roles)):
            ctx.found("target_role_order", f"{self.name} rejects two same roles in a row in the prompt", None)
            prompt = merge_consecutive(prompt, ctx.line)[0]
        return replace(
            example,
            input=_uniform(prompt),
            preferred_output=[checks.flat_text(m) for m in example.preferred_output],
            non_preferred_output=[checks.flat_text(m) for m in example.non_preferred_output],
        )


def _prompt(example: PreferenceExample) -> ChatExample:
    return example.input


def ends_on_prompt(prompt: ChatExample, ctx: Context, target: str) -> ChatExample:
    """A preference prompt must not end on the assistant: the fix drops its trailing assistant turns."""
    messages = list(prompt.messages)
    if not messages or messages[-1].role != "assistant":
        return prompt
    ctx.found(
        "target_role_order",
        f"{target} needs the preference prompt to end before the assistant",
        len(messages) - 1,
    )
    while messages and messages[-1].role == "assistant":
        messages.pop()
    if not messages:
        raise _Stop("dropped")
    return replace(prompt, messages=messages)


def _uniform(example: ChatExample) -> ChatExample:
    """All contents as strings, or (when one holds an image) all as content lists."""
    flat = [checks.flat_text(m) for m in example.messages]
    if all(m.content is None or isinstance(m.content, str) for m in flat):
        return replace(example, messages=flat)
    return replace(example, messages=[_as_list(m) for m in flat])


def _as_list(m: Message) -> Message:
    if isinstance(m.content, str):
        return replace(m, content=[TextPart(m.content)])
    return m


TARGET = Together()
