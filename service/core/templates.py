"""Declarative chat templates: how a conversation becomes one token sequence.

A template is data, not code: per-role header strings with `{role}`/`{name}` placeholders, the
end-of-turn string, what follows it, how tool calls and tool results are written, and whether
the end-of-turn token of a trained message carries loss (it does by default, so the model
learns to stop). Special tokens are only recognised in the template's own literal text;
conversation text is always encoded as ordinary text, so a user who types `<|end|>` cannot
end a turn.

Built in:
- `harmony`: gpt-oss on `o200k_harmony`, token for token what `openai-harmony`'s
  `render_conversation_for_training` produces (a test checks it). The system prompt becomes
  harmony's developer message (`# Instructions`), earlier assistant turns end with `<|end|>`,
  the final one with `<|return|>`, tool calls go to `functions.NAME` and end with `<|call|>`.
- `chatml`: `<|im_start|>role\\n...<|im_end|>\\n` on `cl100k_im` (cl100k_base plus the ChatML tokens).
- `openai-o200k` / `openai-cl100k`: the provider targets. Their structure tokens are stand-ins
  (the provider's rendering is private), chosen so that every message costs exactly what the
  provider bills: 3 per message, 1 more with a name, 3 for the reply priming.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, cached_property

import msgspec
import tiktoken

from service.core.encodings import EncodingSpec, encoding_spec, get_encoding


class TemplateError(ValueError):
    """The template is unknown or malformed."""


class ChatTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Strings that may hold special tokens and `{placeholders}`; see the module docstring."""

    name: str
    encoding: str
    description: str = ""
    header: str  # opens a message; {role}
    name_field: str = ""  # written after the header when the message has a name; {name}
    call_id_field: str = ""  # written after the header when the message has a tool_call_id; {tool_call_id}
    header_end: str = ""  # closes the header, after those fields
    role_names: dict[str, str] = {}  # rename roles when rendering (harmony: system -> developer)
    system_prefix: str = ""  # written before the system prompt's text
    assistant_header: str | None = None  # the prompt side of an assistant turn (default: header)
    assistant_generated: str = ""  # what the model writes before its text (harmony's channel): trained
    end: str  # the end-of-turn string (trained after a trained message when train_end)
    last_end: str | None = None  # end of a final assistant message, when different (harmony: <|return|>)
    after_end: str = ""  # text after the end token, never trained (ChatML's newline)
    tool_calls_inline: bool = False  # calls written inside the assistant message, before its end
    tool_call_header: str = ""  # prompt side of a tool-call turn (separate turns only)
    tool_call_generated: str = ""  # what the model writes before the arguments; {name}
    tool_call_end: str | None = None  # closes a tool-call turn (default: end)
    tool_result_header: str | None = None  # opens a tool result; {name} {role} {tool_call_id}
    priming: str = ""  # billed once at the end, never trained (provider targets)
    train_end: bool = True


BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        ChatTemplate(
            name="harmony",
            encoding="o200k_harmony",
            description="gpt-oss (harmony format), as openai-harmony renders for training",
            header="<|start|>{role}<|message|>",
            role_names={"system": "developer"},
            system_prefix="# Instructions\n\n",
            assistant_header="<|start|>assistant",
            assistant_generated="<|channel|>final<|message|>",
            end="<|end|>",
            last_end="<|return|>",
            tool_call_header="<|start|>assistant",
            tool_call_generated=" to=functions.{name}<|channel|>commentary <|constrain|>json<|message|>",
            tool_call_end="<|call|>",
            tool_result_header="<|start|>functions.{name} to=assistant<|channel|>commentary<|message|>",
        ),
        ChatTemplate(
            name="chatml",
            encoding="cl100k_im",
            description="ChatML (<|im_start|>role ... <|im_end|>) on cl100k_base with the ChatML tokens",
            header="<|im_start|>{role}\n",
            end="<|im_end|>",
            after_end="\n",
            tool_call_header="<|im_start|>assistant\n",
            tool_call_generated='<tool_call>\n{"name": "{name}", "arguments": ',
            tool_call_end="}\n</tool_call><|im_end|>",
        ),
        ChatTemplate(
            name="openai-o200k",
            encoding="o200k_harmony",
            description="what an o200k provider model bills (stand-in structure tokens)",
            header="<|start|>{role}",
            name_field="<|channel|>{name}",
            call_id_field="<|channel|>{tool_call_id}",
            header_end="<|message|>",
            end="<|end|>",
            tool_calls_inline=True,
            tool_call_generated="<|channel|>{name}<|channel|>",
            priming="<|start|>assistant<|message|>",
        ),
        ChatTemplate(
            name="openai-cl100k",
            encoding="cl100k_im",
            description="what a cl100k provider model bills (stand-in structure tokens)",
            header="<|im_start|>{role}",
            name_field="<|im_sep|>{name}",
            call_id_field="<|im_sep|>{tool_call_id}",
            header_end="<|im_sep|>",
            end="<|im_end|>",
            tool_calls_inline=True,
            tool_call_generated="<|im_sep|>{name}<|im_sep|>",
            priming="<|im_start|>assistant<|im_sep|>",
        ),
    ]
}


def get_template(name: str) -> ChatTemplate:
    try:
        return BUILTIN_TEMPLATES[name]
    except KeyError:
        raise TemplateError(
            f"unknown template {name!r}; known: {', '.join(sorted(BUILTIN_TEMPLATES))}"
        ) from None


def provider_template(encoding: str) -> ChatTemplate:
    return get_template("openai-cl100k" if encoding.startswith("cl100k") else "openai-o200k")


Piece = tuple[bool, str]  # (is_special, text)


@dataclass(frozen=True)
class Compiled:
    """A template bound to its encoding, with its strings split into special and text pieces.

    The encoding itself is built on first use: its special tokens come from its spec, and a
    build whose accountant already encodes ordinary text the same way never needs it
    (`workers.template_documents.TemplateDocuments.reuse`)."""

    template: ChatTemplate

    @cached_property
    def enc(self) -> tiktoken.Encoding:
        return get_encoding(self.template.encoding)

    @cached_property
    def spec(self) -> EncodingSpec:
        return encoding_spec(self.template.encoding)

    def pieces(self, literal: str, **values: str) -> list[Piece]:
        """Split a template string at the encoding's special tokens, then fill placeholders.

        Placeholders are filled after the split, so values are always ordinary text."""
        out: list[Piece] = []
        for is_special, text in _split_literal(literal, self.specials):
            if is_special:
                out.append((True, text))
                continue
            filled = text
            for key, value in values.items():
                filled = filled.replace("{" + key + "}", value)
            if not filled:
                continue
            if out and not out[-1][0]:
                out[-1] = (False, out[-1][1] + filled)
            else:
                out.append((False, filled))
        return out

    @cached_property
    def specials(self) -> frozenset[str]:
        """The encoding's special tokens, built once (harmony has over a thousand)."""
        return frozenset(self.spec.special_tokens)

    def special_id(self, token: str) -> int:
        return self.spec.special_tokens[token]


_SPECIAL_RE = re.compile(r"(<\|[^|<>\s]+\|>)")


@cache
def _split_literal(literal: str, specials: frozenset[str]) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for part in _SPECIAL_RE.split(literal):
        if not part:
            continue
        if part in specials:
            out.append((True, part))
        elif out and not out[-1][0]:
            out[-1] = (False, out[-1][1] + part)
        else:
            out.append((False, part))
    return tuple(out)


_compiled: dict[str, Compiled] = {}


def compile_template(template: ChatTemplate) -> Compiled:
    """The template bound to its encoding; compiled once per template."""
    cached = _compiled.get(template.name)
    if cached is not None and cached.template == template:
        return cached
    literals = (
        template.header,
        template.name_field,
        template.call_id_field,
        template.header_end,
        template.assistant_header,
        template.assistant_generated,
        template.end,
        template.last_end,
        template.tool_call_header,
        template.tool_call_generated,
        template.tool_call_end,
        template.tool_result_header,
        template.priming,
    )
    compiled = Compiled(template)
    encoding_spec(template.encoding)  # an unknown encoding fails here, not at first use
    for literal in filter(None, literals):
        # the same frozenset object on every call: the cache then compares keys by identity
        for is_special, text in _split_literal(literal, compiled.specials):
            if not is_special and "<|" in text and _SPECIAL_RE.search(text):
                raise TemplateError(
                    f"template {template.name}: {text!r} names a token {template.encoding} lacks"
                )
    _compiled[template.name] = compiled
    return compiled
