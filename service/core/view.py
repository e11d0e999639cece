"""The training view: the exact token sequence a target sees, with what carries loss and why.

Masks come from construction, not from diffing renders: every segment (a header, a message's
text, an end-of-turn token) is tokenized on its own and the sequence is their concatenation,
so `trained` is exact per token. Concatenating separately tokenized pieces equals tokenizing
the whole rendered string whenever a boundary falls at a special token or at a point the
pre-tokenizer cannot cross. Where two text pieces meet at a point it *could* cross (ChatML's
`role\\n` before text that starts with whitespace, say), the whole text run is tokenized once
and its tokens are handed back to the pieces by byte offset, a token that straddles the
boundary going to the later piece. A property test checks the equality for every template.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from service.core.conversation import ChatExample, Message, text_of
from service.core.templates import ChatTemplate, Compiled, Piece, compile_template
from service.core.tokens import encode_text


class Segment(msgspec.Struct):
    text: str
    token_ids: list[int]
    message_index: int | None
    role: str | None
    trained: bool
    reason: str


class TrainingView(msgspec.Struct):
    target: str
    encoding: str
    segments: list[Segment]
    billed_tokens: int
    trained_tokens: int
    total_tokens: int
    notes: list[str] = []

    def token_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    def labels_mask(self) -> list[bool]:
        return [s.trained for s in self.segments for _ in s.token_ids]


def _safe_boundary(left: str, right: str) -> bool:
    """True when no cl100k/o200k pre-tokenizer piece can span `left|right` (checked by property tests)."""
    last, first = left[-1], right[0]
    if last == "\n" and first.isalnum():
        return True
    return not last.isspace() and first == " " and len(right) > 1 and not right[1].isspace()


@dataclass
class _RunPiece:
    segment: int
    start: int  # where this piece's ids begin in the segment's token_ids
    text: str


@dataclass
class _Builder:
    c: Compiled
    segments: list[Segment] = field(default_factory=list)
    run: list[_RunPiece] = field(default_factory=list)

    def add(
        self, pieces: list[Piece], message_index: int | None, role: str | None, trained: bool, reason: str
    ) -> None:
        if not pieces:
            return
        seg = Segment("".join(text for _, text in pieces), [], message_index, role, trained, reason)
        self.segments.append(seg)
        index = len(self.segments) - 1
        for is_special, text in pieces:
            if is_special:
                seg.token_ids.append(self.c.special_id(text))
                self.run.clear()
            elif not self.run or _safe_boundary(self.run[-1].text, text):
                self.run.append(_RunPiece(index, len(seg.token_ids), text))
                seg.token_ids.extend(encode_text(self.c.enc, text))
            else:
                self.run.append(_RunPiece(index, len(seg.token_ids), text))
                self._retokenize_run()

    def text(
        self, text: str, message_index: int | None, role: str | None, trained: bool, reason: str
    ) -> None:
        self.add([(False, text)] if text else [], message_index, role, trained, reason)

    def _retokenize_run(self) -> None:
        enc = self.c.enc
        ids = encode_text(enc, "".join(p.text for p in self.run))
        for p in self.run:
            del self.segments[p.segment].token_ids[p.start :]
        ends: list[int] = []
        total = 0
        for p in self.run:
            total += len(p.text.encode("utf-8"))
            ends.append(total)
        k = 0
        offset = 0
        for token in ids:
            offset += len(enc.decode_single_token_bytes(token))
            while k < len(ends) - 1 and offset > ends[k]:
                k += 1
            self.segments[self.run[k].segment].token_ids.append(token)


def _content_reason(m: Message, index: int, last_assistant: int) -> tuple[bool, str]:
    if m.role == "assistant":
        if m.weight == 0:
            return False, "assistant weight 0: context, not trained"
        return True, "assistant weight 1: trained"
    if index > last_assistant:
        return False, f"trailing {m.role}: billed, never trained"
    if m.role == "system":
        return False, "system prompt: context, not trained"
    return False, f"{m.role} message: context, not trained"


def render(example: ChatExample, template: ChatTemplate) -> list[Segment]:
    """The segments of one conversation under one template."""
    c = compile_template(template)
    t = template
    b = _Builder(c)
    messages = example.messages
    last_assistant = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    last = len(messages) - 1
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        role = m.role
        shown = t.role_names.get(role, role)
        trained, reason = _content_reason(m, i, last_assistant)
        end_trained = trained and t.train_end
        end_reason = (
            "end-of-turn token trained so the model learns to stop"
            if end_trained
            else "end-of-turn token: not trained"
        )
        calls = [(tc.id, tc.function.name, tc.function.arguments) for tc in m.tool_calls or []]
        if m.function_call is not None:
            calls.append(("", m.function_call.name, m.function_call.arguments))
        for call_id, name, _ in calls:
            call_names[call_id] = name
        separate_calls = calls and not t.tool_calls_inline
        if role == "assistant" and m.content is None and separate_calls:
            pass  # only tool-call turns below
        else:
            if role == "tool" and t.tool_result_header is not None:
                name = call_names.get(m.tool_call_id or "", "")
                header = c.pieces(
                    t.tool_result_header, role=shown, name=name, tool_call_id=m.tool_call_id or ""
                )
            elif role == "assistant" and t.assistant_header is not None:
                header = c.pieces(t.assistant_header, role=shown)
            else:
                header = c.pieces(t.header, role=shown)
                if m.name is not None and t.name_field:
                    header += c.pieces(t.name_field, name=m.name)
                if m.tool_call_id is not None and t.call_id_field:
                    header += c.pieces(t.call_id_field, tool_call_id=m.tool_call_id)
                header += c.pieces(t.header_end)
            b.add(header, i, role, False, f"{shown} header (template): not trained")
            if role == "assistant" and t.assistant_generated:
                b.add(
                    c.pieces(t.assistant_generated),
                    i,
                    role,
                    trained,
                    "channel the model writes before its text: " + ("trained" if trained else "not trained"),
                )
            if role == "system" and t.system_prefix:
                b.text(t.system_prefix, i, role, False, "system prompt prefix (template): not trained")
            b.text(text_of(m), i, role, trained, reason)
            if t.tool_calls_inline:
                for _, name, arguments in calls:
                    b.add(
                        c.pieces(t.tool_call_generated, name=name),
                        i,
                        role,
                        trained,
                        "tool call name: " + reason,
                    )
                    b.text(arguments, i, role, trained, "tool call arguments: " + reason)
            final = i == last and role == "assistant" and not separate_calls and t.last_end
            b.add(c.pieces(t.last_end if final and t.last_end else t.end), i, role, end_trained, end_reason)
            b.text(t.after_end, i, role, False, "after the end-of-turn token (template): not trained")
        if separate_calls:
            for _, name, arguments in calls:
                b.add(
                    c.pieces(t.tool_call_header), i, role, False, "tool call header (template): not trained"
                )
                b.add(
                    c.pieces(t.tool_call_generated, name=name),
                    i,
                    role,
                    trained,
                    "tool call the model writes: " + ("trained" if trained else "not trained"),
                )
                b.text(arguments, i, role, trained, "tool call arguments: " + reason)
                b.add(
                    c.pieces(t.tool_call_end or t.end),
                    i,
                    role,
                    end_trained,
                    "end of the tool call, trained so the model learns to stop"
                    if end_trained
                    else "end of the tool call: not trained",
                )
                b.text(t.after_end, i, role, False, "after the end-of-turn token (template): not trained")
    if t.priming:
        b.add(
            c.pieces(t.priming),
            None,
            "assistant",
            False,
            "reply priming: counted by the provider's billing formula, not trained",
        )
    return b.segments


def rendered_text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments)


def build_view(
    example: ChatExample,
    template: ChatTemplate,
    *,
    target: str | None = None,
    billed_tokens: int | None = None,
) -> TrainingView:
    segments = render(example, template)
    total = sum(len(s.token_ids) for s in segments)
    trained = sum(len(s.token_ids) for s in segments if s.trained)
    notes = []
    if example.tools or example.functions:
        notes.append(
            "tool definitions are not shown as segments: "
            + (
                "the provider bills them by its formula (in billed_tokens)"
                if template.priming
                else "this template does not render them"
            )
        )
    return TrainingView(
        target=target or template.name,
        encoding=template.encoding,
        segments=segments,
        billed_tokens=total if billed_tokens is None else billed_tokens,
        trained_tokens=trained,
        total_tokens=total,
        notes=notes,
    )
