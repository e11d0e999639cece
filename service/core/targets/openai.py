"""`openai`: OpenAI's fine-tuning format, written exactly as tuneset always has.

Chat lines are `{"messages", "tools", "parallel_tool_calls", "functions"}`; preference lines are
DPO's `{"input", "preferred_output", "non_preferred_output"}`. The pipeline's own checks are
OpenAI's rules (schema, roles, special tokens, the model's limit), so this target adds none; its
artifact names are the plain `train.jsonl` / `validation.jsonl` of every earlier build.
"""

from __future__ import annotations

from typing import ClassVar

from service.core.targets.base import Kind, Rule, Target


class OpenAI(Target):
    name = "openai"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"chat", "preference"})
    uploads = True
    provider_kind = "openai"
    rules = (
        Rule("too_few_examples", "at least the model's minimum of examples (10)"),
        Rule("over_token_limit", "the model's per-example limit (the models table)"),
        Rule("special_token_text", "no text that spells a special token"),
    )
    token_counting = "the recipe model's encoding (tiktoken), as OpenAI bills: the platform's own count"
    upload_hint = (
        "tuneset uploads them (`upload` in the build recipe), or: "
        "`openai api files.create -f train.jsonl -p fine-tune`"
    )

    def folder(self) -> str:
        return ""


TARGET = OpenAI()
