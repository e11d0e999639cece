"""`fireworks`: Fireworks AI's fine-tuning datasets.

OpenAI-style chat lines (`messages` with `tool_calls`, `tools`, the per-message `weight` 0/1)
whose system message must come first (`target_role_order`), and OpenAI's preference shape
(`input.messages`, `preferred_output`, `non_preferred_output`). Between 3 and 3,000,000 examples.
The deprecated `functions` / `function_call` have no equivalent.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from service.core.conversation import ChatExample, PreferenceExample
from service.core.targets import checks
from service.core.targets.base import Context, Kind, Rule, Target
from service.core.targets.together import ends_on_prompt

replace = msgspec.structs.replace


class Fireworks(Target):
    name = "fireworks"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"chat", "preference"})
    rules = (
        Rule("target_role_order", "system messages first; a preference prompt not ending on the assistant"),
        Rule("target_tool_calls_unsupported", "no deprecated `functions` / `function_call`"),
        Rule("target_example_count", "3 to 3,000,000 examples"),
    )
    upload_hint = (
        "`firectl create dataset NAME train.jsonl`, then "
        "`firectl create sftj --dataset NAME --base-model MODEL`"
    )

    def adapt_chat(self, example: ChatExample, ctx: Context) -> list[ChatExample]:
        example = checks.no_tools(example, ctx, self.name, legacy_only=True)
        example = checks.system_first(example, ctx, self.name)
        return [replace(example, messages=[checks.flat_text(m) for m in example.messages])]

    def adapt_preference(self, example: PreferenceExample, ctx: Context) -> PreferenceExample:
        prompt = checks.no_tools(example.input, ctx, self.name, legacy_only=True)
        prompt = checks.system_first(prompt, ctx, self.name)
        prompt = ends_on_prompt(prompt, ctx, self.name)
        return replace(
            example,
            input=replace(prompt, messages=[checks.flat_text(m) for m in prompt.messages]),
            preferred_output=[checks.flat_text(m) for m in example.preferred_output],
            non_preferred_output=[checks.flat_text(m) for m in example.non_preferred_output],
        )


TARGET = Fireworks()
