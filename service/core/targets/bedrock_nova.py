"""`bedrock-nova`: Amazon Bedrock's conversation schema for Nova supervised fine-tuning.

A line is `{"schemaVersion": "bedrock-conversation-2024", "system": [{"text"}], "messages":
[{"role": "user" | "assistant", "content": [{"text"}]}]}`: user first, assistant last, strictly
alternating (`target_role_order`), text only (`target_unsupported_content` for images), no tools
(`target_tool_calls_unsupported`: the fix keeps the turns before the first call), no weights
(`target_weight_unsupported`) and none of the strings the platform reserves
(`target_reserved_string`: `User:`, `Bot:`, `[EOS]`, ...; the job fails on them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from service.core.conversation import ChatExample, text_of
from service.core.targets import checks
from service.core.targets.base import Context, Kind, Rule, Target

_json = msgspec.json.Encoder()
SCHEMA_VERSION = "bedrock-conversation-2024"


class BedrockNova(Target):
    name = "bedrock-nova"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"chat"})
    rules = (
        Rule("target_role_order", "user first, assistant last, user and assistant alternating"),
        Rule("target_tool_calls_unsupported", "no tools, tool calls or tool results"),
        Rule("target_unsupported_content", "text only"),
        Rule("target_reserved_string", "none of User:, Bot:, Assistant:, System:, <image>, <video>, [EOS]"),
        Rule("target_weight_unsupported", "no per-message weights"),
    )
    upload_hint = (
        "`aws s3 cp train.jsonl s3://BUCKET/`, then `aws bedrock create-model-customization-job "
        "--customization-type FINE_TUNING --training-data-config s3Uri=s3://BUCKET/train.jsonl ...`"
    )

    def adapt_chat(self, example: ChatExample, ctx: Context) -> list[ChatExample]:
        example = checks.no_tools(example, ctx, self.name)
        example = checks.images_accepted(example, ctx, self.name, lambda url: False)
        example = checks.no_reserved(example, ctx, self.name, self.facts.reserved_strings)
        example = checks.strict_alternation(example, ctx, self.name)
        return checks.no_weights(example, ctx, self.name)

    def encode_chat(self, example: ChatExample) -> bytes:
        out: dict[str, Any] = {"schemaVersion": SCHEMA_VERSION}
        system = [{"text": text_of(m)} for m in example.messages if m.role == "system"]
        if system:
            out["system"] = system
        out["messages"] = [
            {"role": m.role, "content": [{"text": text_of(m)}]}
            for m in example.messages
            if m.role != "system"
        ]
        return _json.encode(out)


TARGET = BedrockNova()
