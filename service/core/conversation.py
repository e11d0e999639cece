"""The one internal representation of training examples; also the OpenAI wire schema.

The Structs forbid unknown fields so that a strict msgspec decode of a line doubles as the
provider's schema check (the fast path); anything it rejects goes to the slow, explaining
validator in `schema_check`. Encoding omits defaults, so an example writes back exactly the
keys the provider expects. The Structs are not tracked by the cyclic garbage collector
(`gc=False`): values decoded from JSON cannot form reference cycles, and untracked objects
make decoding and collection cheaper at a few hundred thousand messages a second.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class TextPart(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True, gc=False):
    text: str


class ImageUrl(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True, gc=False):
    image_url: ImageUrl


class RefusalPart(msgspec.Struct, tag="refusal", tag_field="type", forbid_unknown_fields=True, gc=False):
    refusal: str


ContentPart = TextPart | ImagePart | RefusalPart


class FunctionCall(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: str
    type: Literal["function"]  # required by the provider, so never defaulted (and never omitted on output)
    function: FunctionCall


class Message(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    weight: int | None = None


class FunctionDef(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Literal["function"]
    function: FunctionDef


class ChatExample(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """One supervised example: `{"messages": [...], "tools": [...], ...}`."""

    messages: list[Message]
    tools: list[Tool] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None


class PreferenceExample(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """One DPO example: a shared prompt and one preferred and one non-preferred assistant reply."""

    input: ChatExample
    preferred_output: list[Message]
    non_preferred_output: list[Message]


Example = ChatExample | PreferenceExample

ROLES = frozenset({"system", "user", "assistant", "tool", "function"})


def text_of(message: Message) -> str:
    """The text a message carries (text and refusal parts joined); images contribute nothing."""
    content = message.content
    if content is None:
        return ""
    if type(content) is str:
        return content
    out: list[str] = []
    for part in content:
        if type(part) is TextPart:
            out.append(part.text)
        elif type(part) is RefusalPart:
            out.append(part.refusal)
    return "".join(out)


def image_count(message: Message) -> int:
    content = message.content
    if content is None or type(content) is str:
        return 0
    return sum(1 for part in content if type(part) is ImagePart)


def is_trained(message: Message) -> bool:
    """Provider default: every assistant message is trained unless `weight` is 0."""
    return message.role == "assistant" and message.weight != 0


def chat_of(example: Example) -> ChatExample:
    """The conversation an example trains on (for DPO: the prompt plus the preferred reply)."""
    if isinstance(example, ChatExample):
        return example
    return msgspec.structs.replace(
        example.input, messages=[*example.input.messages, *example.preferred_output]
    )
