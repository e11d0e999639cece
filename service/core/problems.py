"""Every problem tuneset reports: a closed list of stable codes.

This registry is the one place the codes are defined; `docs/problem-codes.md` is generated
from it (`tuneset codes --markdown`) and a test fails when the two drift. Severity `error`
means the provider would reject the file or the build cannot proceed; `warning` means the
data is accepted but probably not what you meant. The `template` layer is found by rendering
each example with a model profile's own chat template and tokenizer (only when a profile is
given): it answers what that model's trainer will really see.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import msgspec

Severity = Literal["error", "warning"]
Layer = Literal["schema", "structure", "template", "budget", "target"]


class Action(StrEnum):
    KEEP = "keep"
    FIX = "fix"
    DROP = "drop"
    FAIL = "fail"


@dataclass(frozen=True)
class CodeInfo:
    code: str
    layer: Layer
    severity: Severity
    summary: str
    fix: str | None = None  # what `fix` does, when the code has a fix
    example_level: bool = True  # False: about the whole file, so `drop` makes no sense

    @property
    def actions(self) -> tuple[Action, ...]:
        acts: list[Action] = []
        if self.severity == "warning":
            acts.append(Action.KEEP)
        if self.fix:
            acts.append(Action.FIX)
        if self.example_level:
            acts.append(Action.DROP)
        acts.append(Action.FAIL)
        if not self.example_level and Action.KEEP not in acts:
            acts.insert(0, Action.KEEP)
        return tuple(acts)

    @property
    def default(self) -> Action:
        """Defaults reproduce what the provider does with the data as sent: nothing changes."""
        return Action.KEEP if self.severity == "warning" else Action.FAIL


# Turn markers of common chat transcripts and templates. Found inside a user or assistant
# message after some text, one means a conversion leaked the next turn into this one (the
# `role_marker_in_content` check; its fix cuts the message there). Kept short on purpose: each
# is unlikely in ordinary prose. "\nHuman:" also covers HH's "\n\nHuman:".
ROLE_MARKERS: tuple[str, ...] = (
    "\nHuman:",  # Anthropic HH transcripts
    "\nAssistant:",
    "<|im_start|>",  # ChatML
    "[INST]",  # Llama 2, Mistral
    "<|start_header_id|>",  # Llama 3
    "<start_of_turn>",  # Gemma
)

_CODES = [
    # -- schema: what the provider's own file validation rejects
    CodeInfo("invalid_json", "schema", "error", "The line is not valid JSON."),
    CodeInfo("not_an_object", "schema", "error", "The line is JSON but not an object."),
    CodeInfo(
        "missing_messages",
        "schema",
        "error",
        "The example has no `messages` list (or its format's equivalent).",
    ),
    CodeInfo("invalid_messages", "schema", "error", "`messages` is not a non-empty list of objects."),
    CodeInfo(
        "unknown_key",
        "schema",
        "error",
        "The example has a top-level key the format does not define.",
        fix="remove the key",
    ),
    CodeInfo(
        "unknown_message_key",
        "schema",
        "error",
        "A message has a key the format does not define.",
        fix="remove the key",
    ),
    CodeInfo(
        "invalid_field", "schema", "error", "A field has the wrong type or value (e.g. `name` not a string)."
    ),
    CodeInfo(
        "unknown_role",
        "schema",
        "error",
        "A message's role is not system, user, assistant, tool or function.",
    ),
    CodeInfo(
        "missing_content",
        "schema",
        "error",
        "A message has no content (assistant messages may omit it only with `tool_calls`/`function_call`).",
    ),
    CodeInfo(
        "invalid_content",
        "schema",
        "error",
        "Content is neither a string nor a list of parts allowed for the role "
        "(images only from the user, one refusal part alone).",
    ),
    CodeInfo("invalid_weight", "schema", "error", "`weight` is not the integer 0 or 1."),
    CodeInfo(
        "weight_on_non_assistant",
        "schema",
        "error",
        "`weight` is set on a message that is not the assistant's.",
        fix="remove the weight",
    ),
    CodeInfo("missing_tool_call_id", "schema", "error", "A tool message has no `tool_call_id`."),
    CodeInfo("too_many_images", "schema", "error", "The example has more than 10 images."),
    CodeInfo(
        "special_token_text",
        "schema",
        "error",
        "Text spells a special token such as `<|endoftext|>`; the provider rejects the file.",
        fix="remove the special-token spellings from the text",
    ),
    CodeInfo(
        "invalid_preference",
        "schema",
        "error",
        "A preference example needs `input.messages` and exactly one assistant message in each of "
        "`preferred_output` and `non_preferred_output`.",
    ),
    # -- structure: accepted by the schema, but probably not what you meant
    CodeInfo(
        "no_assistant_message",
        "structure",
        "error",
        "The example has no assistant message: nothing to train.",
    ),
    CodeInfo(
        "no_trainable_assistant",
        "structure",
        "warning",
        "Every assistant message has `weight: 0`: the example is billed but trains nothing.",
    ),
    CodeInfo(
        "consecutive_same_role",
        "structure",
        "warning",
        "Two messages in a row have the same role (e.g. two assistant turns).",
        fix="merge them into one message, joining the text with a blank line",
    ),
    CodeInfo(
        "assistant_first",
        "structure",
        "warning",
        "The conversation starts (after any system message) with the assistant: "
        "that turn is trained with no prompt.",
        fix="drop the assistant messages before the first user message",
    ),
    CodeInfo("no_user_message", "structure", "warning", "The example has no user message."),
    CodeInfo(
        "no_system_message",
        "structure",
        "warning",
        "The example has no system message.",
        fix="insert the configured system prompt",
    ),
    CodeInfo(
        "system_not_first",
        "structure",
        "warning",
        "A system message comes after other messages.",
        fix="move the system message to the front",
    ),
    CodeInfo("system_repeated", "structure", "warning", "The example has more than one system message."),
    CodeInfo(
        "trailing_non_assistant",
        "structure",
        "warning",
        "The example ends with non-assistant messages: billed, never trained.",
        fix="drop the trailing messages",
    ),
    CodeInfo(
        "empty_content",
        "structure",
        "warning",
        "A message's text is empty or only whitespace.",
        fix="drop the empty message",
    ),
    CodeInfo(
        "unnormalized_text",
        "structure",
        "warning",
        "Text is not Unicode NFC or has leading/trailing whitespace.",
        fix="normalize to NFC and strip",
    ),
    CodeInfo(
        "role_marker_in_content",
        "structure",
        "warning",
        "A user or assistant message has another turn's marker after some of its text ("
        + ", ".join(f"`{m.encode('unicode_escape').decode()}`" for m in ROLE_MARKERS)
        + "): a transcript conversion probably leaked the next turn into it. With a model profile, "
        "also any of the profile's own special-token strings (e.g. `<|im_end|>`) anywhere in a "
        "message: the trainer's tokenizer reads it as that control token, not as text.",
        fix="cut the message at the marker (with a model profile, a special-token string of the "
        "profile that opens the text is removed)",
    ),
    CodeInfo(
        "unmatched_tool_call_id",
        "structure",
        "error",
        "A tool message's `tool_call_id` answers no earlier assistant tool call.",
    ),
    # -- template: found by rendering with a model profile's own chat template and tokenizer
    CodeInfo(
        "template_rejects_conversation",
        "template",
        "error",
        "The model's chat template raises on the conversation (e.g. Gemma 3's \"Conversation roles "
        "must alternate\"): the trainer cannot render it. The message quotes the template's own error.",
        fix="merge consecutive same-role messages, drop leading assistant messages and trailing "
        "non-assistant messages, then render again; the example is kept only if the template "
        "then accepts it",
    ),
    CodeInfo(
        "template_drops_content",
        "template",
        "warning",
        "A message's text (or its tool calls) does not appear in the rendered text: the template "
        "ignores it (e.g. a system prompt it does not render, `tool_calls` dropped when `content` is set).",
    ),
    CodeInfo(
        "template_rewrites_history",
        "template",
        "warning",
        "Rendering the conversation prefix by prefix changes how earlier turns look (Qwen3 strips "
        "`<think>` from history, gpt-oss ends earlier turns differently): those trained turns are "
        "trained on text the model never sees at inference.",
        fix="expand_per_turn: one example per assistant turn, the conversation up to it, that turn "
        "alone trained, each rendered as inference would see it",
    ),
    CodeInfo(
        "template_injects_text",
        "template",
        "warning",
        "The rendered text holds text that is in no message (Llama 3.1's date header, a default "
        "system prompt): every example is trained with it as context.",
    ),
    CodeInfo(
        "eot_not_trained",
        "template",
        "warning",
        "The end-of-turn token after a trained message carries no loss under the chosen rules: "
        "the model may never learn to stop.",
    ),
    CodeInfo(
        "mask_sources_disagree",
        "template",
        "warning",
        "The template's `{% generation %}` markers and tuneset's message spans train different tokens.",
    ),
    # -- budget: per target model
    CodeInfo(
        "over_token_limit",
        "budget",
        "warning",
        "The example is longer than the model's per-example limit; the provider truncates it from the end.",
        fix="split the conversation into windows that fit, training each assistant turn exactly once",
    ),
    CodeInfo(
        "too_few_examples",
        "budget",
        "error",
        "The file has fewer examples than the provider's minimum.",
        example_level=False,
    ),
    CodeInfo(
        "duplicate_example",
        "budget",
        "warning",
        "The example is an exact duplicate of an earlier one.",
        fix="drop the duplicate",
    ),
    # -- target: what a training target (`--to` / `outputs.targets`) cannot take or express
    CodeInfo(
        "target_role_order",
        "target",
        "error",
        "The target's platform rejects this order of roles (Together: two same roles in a row; "
        "Fireworks: a system message not first; Bedrock Nova: not user first, assistant last, "
        "strictly alternating; a preference prompt that ends on the assistant).",
        fix="merge consecutive same-role messages, move system messages first, drop leading "
        "assistant and trailing non-assistant messages",
    ),
    CodeInfo(
        "target_weight_unsupported",
        "target",
        "warning",
        "An assistant message has `weight: 0`, but the target has no per-message weights "
        "(Vertex AI Gemini, Bedrock Nova): written as is, that turn is trained.",
        fix="split: one example per trained assistant turn, ending on it, the turns before it as context",
    ),
    CodeInfo(
        "target_tool_calls_unsupported",
        "target",
        "error",
        "The example has tool definitions, tool calls or tool results the target cannot express "
        "(Bedrock Nova; the deprecated `functions`/`function_call` on every target but OpenAI's).",
        fix="keep as context what comes before the first tool call: cut the conversation there "
        "(kept when it still ends on an assistant turn)",
    ),
    CodeInfo(
        "target_reserved_string",
        "target",
        "error",
        "Text holds a string the target's platform reserves (Bedrock Nova: `User:`, `Bot:`, "
        "`Assistant:`, `System:`, `<image>`, `<video>`, `[EOS]`): its job fails.",
        fix="remove the reserved strings from the text",
    ),
    CodeInfo(
        "target_unsupported_content",
        "target",
        "error",
        "A content part the target cannot express: an image on a text-only target, or an image "
        "URL that is neither a data URL nor a gs:// URI on Vertex AI.",
        fix="drop the image parts (a refusal part is always written as text)",
    ),
    CodeInfo(
        "target_over_token_limit",
        "target",
        "warning",
        "The example is longer than the target's per-example token limit (counted with the recipe "
        "model's encoding: the platform's own count on OpenAI and Azure, an estimate elsewhere).",
    ),
    CodeInfo(
        "target_example_count",
        "target",
        "error",
        "The file has fewer examples than the target's minimum, or more than its maximum.",
        example_level=False,
    ),
]

CODES: dict[str, CodeInfo] = {c.code: c for c in _CODES}


class Problem(msgspec.Struct, omit_defaults=False, gc=False):
    """One finding about one example (or about the file, when `line` is None)."""

    code: str
    severity: Severity
    message: str
    line: int | None = None
    message_index: int | None = None
    action: str | None = None  # what the policy did: keep | fix | drop | fail


class Change(msgspec.Struct, gc=False):
    """One change a fix made to one example: what, where (line, message index), why (the code)."""

    kind: str
    code: str | None
    line: int | None
    message_index: int | None
    detail: str


def problem(code: str, message: str, line: int | None = None, message_index: int | None = None) -> Problem:
    return Problem(code, CODES[code].severity, message, line, message_index)


def codes_markdown() -> str:
    """The documentation page for every code, generated from this registry."""
    out = [
        "# Problem codes",
        "",
        "Generated from `service/core/problems.py` by `tuneset codes --markdown`; do not edit by hand.",
        "",
        "Every problem carries `code`, `severity`, `message`, the 1-based `line` of the example and the",
        "0-based `message_index` (both null when the problem is about the whole file). A policy per code",
        "chooses what a build does: `keep` (report only), `fix`, `drop` (drop the example) or `fail`.",
        "Defaults change nothing the provider would accept: warnings are kept, errors fail.",
        "The `template` codes come from rendering each example with a model profile's own chat",
        "template and tokenizer, so they are reported only when a profile is given (`--hf-dir`, or",
        "`--tokenizer` with `--chat-template`; `profile` in the API).",
        "",
    ]
    for layer in ("schema", "structure", "template", "budget", "target"):
        out += [
            f"## {layer}",
            "",
            "| code | severity | default | actions | meaning | fix |",
            "|---|---|---|---|---|---|",
        ]
        for c in _CODES:
            if c.layer == layer:
                acts = ", ".join(a.value for a in c.actions)
                fix = c.fix or "—"
                summary = c.summary.replace("|", "\\|")  # a pipe, even in a code span, ends a cell
                out.append(f"| `{c.code}` | {c.severity} | {c.default.value} | {acts} | {summary} | {fix} |")
        out.append("")
    return "\n".join(out)
