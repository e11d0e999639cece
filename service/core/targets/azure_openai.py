"""`azure-openai`: Azure OpenAI takes OpenAI's format, with its own limits.

The same lines as `openai` (the format is the same); what differs is checked here: 65,536 tokens
per example (32,768 for gpt-4.1-nano), at least 10 examples, files under 512 MB. Uploaded through
the openai SDK's `AzureOpenAI` client to a provider profile of kind `azure`.
"""

from __future__ import annotations

from typing import ClassVar

from service.core.targets.base import Kind, Rule, Target


class AzureOpenAI(Target):
    name = "azure-openai"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"chat", "preference"})
    uploads = True
    provider_kind = "azure"
    rules = (
        Rule("target_over_token_limit", "65,536 tokens per example; 32,768 for gpt-4.1-nano"),
        Rule("target_example_count", "at least 10 examples"),
    )
    token_counting = "the recipe model's encoding (tiktoken), as OpenAI bills: the platform's own count"
    upload_hint = (
        "tuneset uploads them to a provider of kind `azure`, or: "
        "`az cognitiveservices account` has no file upload; use the openai SDK's AzureOpenAI "
        "client (`client.files.create(file=open('train.jsonl','rb'), purpose='fine-tune')`)"
    )


TARGET = AzureOpenAI()
