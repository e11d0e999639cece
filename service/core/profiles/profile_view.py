"""The exact training view of one example under a model profile, and what rendering found about it.

Masks come from spans of characters (see `attribution`), mapped to tokens through the tokenizer's
offsets. The span rule (the default `mask_source="spans"`), which the reference comparison cites:

- an assistant message is trained when its `weight` is not 0 and, with `train_on="last"`, it is the
  last assistant message; every other message is context;
- a trained message's output is trained: from where the generation prompt ends to its end-of-turn
  token, i.e. what the template has the model write before its content, the content, its tool calls;
- its end-of-turn marker (the first special token after the content, in that turn) is trained
  when `train_eot` is set; text after it (the `\\n` after `<|im_end|>`, say) is never trained, nor
  is the generation prompt (`<|im_start|>assistant\\n`), which inference supplies;
- a token that straddles the edge of a trained span is trained (as transformers' `char_to_token`
  marks it); a token is attributed to the trained part it touches, else to the part its first
  character is in.

With `mask_source="generation"` the template's `{% generation %}` blocks decide instead (inside the
trained messages). When a template has such blocks, both sources are computed and any token on
which they differ is reported (`mask_sources_disagree`).
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from service.core.conversation import ChatExample, Message, text_of
from service.core.profiles.attribution import (
    PART_AFTER,
    PART_CONTENT,
    PART_EOT,
    PART_EPILOGUE,
    PART_GENERATED,
    PART_HEADER,
    PART_INJECTED,
    PART_PRELUDE,
    PART_TOOL_CALL,
    CharSpan,
    ControlIndex,
    Located,
    anchor_contents,
    injected_runs,
    locate,
    place_turns,
    skeleton_messages,
    structural_names,
    tag_spans,
    template_tags,
)
from service.core.profiles.errors import TemplateRaised
from service.core.profiles.jinja_env import template_literals
from service.core.profiles.model import ModelProfile
from service.core.profiles.rendering import Rendered, render_dicts, template_messages, template_tools
from service.core.view import Segment, TrainingView

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    message_index: int | None


@dataclass
class ProfileResult:
    view: TrainingView | None
    findings: list[Finding]
    rendered: str | None


def _quote(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


# --- what probes teach about a template, once per profile ---------------------------------------


def _probe(profile: ModelProfile, key: str, compute: Any) -> Any:
    probes = profile._probes
    if key in probes.values:
        return probes.values[key]
    value = compute()
    with probes.lock:
        probes.values[key] = value
    return value


def _try_render(
    profile: ModelProfile, msgs: list[dict[str, Any]], tools: Any = None, gen: bool = False
) -> str | None:
    try:
        return render_dicts(profile, msgs, tools, gen).text
    except TemplateRaised:
        return None


_U = {"role": "user", "content": "Probe question?"}
_S = {"role": "system", "content": "Probe system prompt."}
_A = {"role": "assistant", "content": "Probe answer."}


def generation_prompt(profile: ModelProfile) -> str | None:
    """What `add_generation_prompt=True` appends: the header inference writes before the model speaks."""

    def compute() -> str | None:
        for msgs in ([_U], [_S, _U], [_U, _A, _U]):
            plain = _try_render(profile, msgs)
            gen = _try_render(profile, msgs, gen=True)
            if plain is not None and gen is not None and gen.startswith(plain) and len(gen) > len(plain):
                return gen[len(plain) :]
        return None

    result: str | None = _probe(profile, "generation_prompt", compute)
    return result


def generation_prompts(profile: ModelProfile) -> list[str]:
    """The generation prompt and, for templates whose prompt opens what a training render does not
    (DeepSeek's `<｜Assistant｜><think>\n` before a reply whose reasoning it strips), its prefixes that
    end after a special token, longest first."""

    def compute() -> list[str]:
        prompt = generation_prompt(profile)
        if not prompt:
            return []
        out = [prompt]
        if prompt.rstrip() != prompt and prompt.rstrip():
            out.append(prompt.rstrip())
        tok = profile.tokenizer
        ids, offsets = tok.encode(prompt)
        added = {tok.token_to_id(t) for t in getattr(tok, "added_tokens", tok.control_tokens)}
        ends = sorted({e for i, (_, e) in zip(ids, offsets, strict=True) if i in added}, reverse=True)
        out += [prompt[:e] for e in ends if prompt[:e] not in out]
        return out

    result: list[str] = _probe(profile, "generation_prompts", compute)
    return result


def _probe_conversations() -> list[tuple[list[dict[str, Any]], Any]]:
    think = {"role": "assistant", "content": "<think>\nProbe reasoning.\n</think>\n\nProbe answer."}
    call = {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "probe_tool", "arguments": {"x": 1}}}
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": "Probe result."}
    tools = [{"type": "function", "function": {"name": "probe_tool", "parameters": {"type": "object"}}}]
    return [
        ([_S, _U, _A, _U, _A], None),
        ([_U, _A, _U, _A, _U, _A], None),
        ([_U, think, _U, think], None),
        ([_U, call, result, _A, _U, _A], tools),
    ]


def _only_epilogue_differs(profile: ModelProfile, part: str, whole: str) -> bool:
    """The prefix render ends with an eos the template writes after the last message (Phi-3.5), after a
    turn already closed by its own end-of-turn token; gpt-oss's `<|return|>` in place of `<|end|>` is not."""
    eos = profile.eos_token
    if not eos or not part.endswith(eos) or not whole.startswith(part[: -len(eos)]):
        return False
    closed = part[: -len(eos)].rstrip()
    return any(closed.endswith(t) for t in profile.tokenizer.control_tokens)


def may_rewrite_history(profile: ModelProfile) -> bool:
    """False when, on every probe, each prefix ending at an assistant turn renders as a prefix of the
    whole: then no per-example prefix renders are needed (one render per example)."""

    def compute() -> bool:
        checked = 0
        for msgs, tools in _probe_conversations():
            whole = _try_render(profile, msgs, tools)
            if whole is None:
                continue
            for k, m in enumerate(msgs[:-1]):
                if m["role"] != "assistant":
                    continue
                part = _try_render(profile, msgs[: k + 1], tools)
                if part is not None:
                    checked += 1
                    if not whole.startswith(part) and not _only_epilogue_differs(profile, part, whole):
                        return True
        return checked == 0

    result: bool = _probe(profile, "may_rewrite_history", compute)
    return result


def _control_ids(profile: ModelProfile) -> frozenset[int]:
    def compute() -> frozenset[int]:
        tok = profile.tokenizer
        ids = {tok.token_to_id(t) for t in tok.control_tokens}
        return frozenset(i for i in ids if i is not None)

    result: frozenset[int] = _probe(profile, "control_ids", compute)
    return result


def _tags(profile: ModelProfile) -> list[str]:
    def compute() -> list[str]:
        tok = profile.tokenizer
        return [
            t for t in template_tags(template_literals(profile.chat_template)) if t not in tok.control_tokens
        ]

    result: list[str] = _probe(profile, "tags", compute)
    return result


def _empty_render(profile: ModelProfile) -> str | None:
    result: str | None = _probe(profile, "empty_render", lambda: _try_render(profile, []))
    return result


def has_generation_blocks(profile: ModelProfile) -> bool:
    return _GENERATION_TAG.search(profile.chat_template) is not None


# --- which messages are trained -----------------------------------------------------------------


def trained_messages(example: ChatExample, profile: ModelProfile) -> set[int]:
    assistants = [i for i, m in enumerate(example.messages) if m.role == "assistant"]
    if profile.rules.train_on == "last":
        assistants = assistants[-1:]
    return {i for i in assistants if example.messages[i].weight != 0}


def _content_reason(m: Message, index: int, trained: bool, last_assistant: int) -> str:
    if m.role == "assistant":
        if trained:
            return "assistant weight 1: trained"
        if m.weight == 0:
            return "assistant weight 0: context, not trained"
        return "assistant message before the last (train_on last): context, not trained"
    if index > last_assistant:
        return f"trailing {m.role}: context, never trained"
    if m.role == "system":
        return "system prompt: context, not trained"
    return f"{m.role} message: context, not trained"


# --- building character spans --------------------------------------------------------------------


def _spans_for(
    rendered: str,
    example: ChatExample,
    located: list[Located],
    trained: set[int],
    profile: ModelProfile,
    ctl: ControlIndex,
    prelude_end: int,
    epilogue_start: int,
    names: frozenset[str],
) -> tuple[list[CharSpan], list[Finding]]:
    spans: list[CharSpan] = []
    findings: list[Finding] = []
    last_assistant = max((i for i, m in enumerate(example.messages) if m.role == "assistant"), default=-1)

    def add(s: int, e: int, i: int | None, role: str | None, part: str, tr: bool, reason: str) -> None:
        if e > s:
            spans.append(CharSpan(s, e, i, role, part, tr, reason))

    def add_context(s: int, e: int, i: int | None, role: str | None, part: str, reason: str) -> None:
        """Untrained template text, with any prose in it marked as injected."""
        if e <= s:
            return
        at = s
        for a, b in injected_runs(rendered, s, e, ctl, names):
            add(at, a, i, role, part, False, reason)
            add(a, b, i, role, PART_INJECTED, False, "text the template adds (in no message): not trained")
            if i is None:
                where = "before the first message" if part == PART_PRELUDE else "after the last message"
            else:
                where = f"in the header of message {i} ({role})"
            findings.append(
                Finding(
                    "template_injects_text",
                    f"the template writes {_quote(rendered[a:b])} {where}, text that is in no message "
                    "(a default system prompt, a date, tool instructions): the model is trained with it "
                    "as context",
                    i,
                )
            )
            at = b
        add(at, e, i, role, part, False, reason)

    add_context(0, prelude_end, None, None, PART_PRELUDE, "template prelude (in no message): not trained")
    for i, (m, loc) in enumerate(zip(example.messages, located, strict=True)):
        role = m.role
        is_trained = i in trained
        reason = _content_reason(m, i, is_trained, last_assistant)
        header_reason = f"{role} header (template): not trained"
        content = loc.content
        if is_trained and loc.generation_start is not None:
            g = max(loc.generation_start, loc.start)
            add_context(
                loc.start,
                g,
                i,
                role,
                PART_HEADER,
                "generation prompt (template; inference writes it): not trained",
            )
            body_end = loc.eot[0] if loc.eot else loc.end
            at = g
            if content is not None and content[0] >= g:
                add(
                    at,
                    content[0],
                    i,
                    role,
                    PART_GENERATED,
                    True,
                    "text the template has the model write before its content: trained",
                )
                add(content[0], content[1], i, role, PART_CONTENT, True, reason)
                at = content[1]
            add(
                at,
                body_end,
                i,
                role,
                PART_TOOL_CALL if loc.calls_end else PART_GENERATED,
                True,
                "tool call the model writes: trained"
                if loc.calls_end
                else "model output (template): trained",
            )
        else:
            c0 = content[0] if content else (loc.eot[0] if loc.eot else loc.end)
            c0 = max(c0, loc.start)
            add_context(loc.start, c0, i, role, PART_HEADER, header_reason)
            body_end = loc.eot[0] if loc.eot else loc.end
            if content is not None:
                add(content[0], content[1], i, role, PART_CONTENT, is_trained, reason)
                tail_reason = (
                    "tool call the model writes: " if loc.calls_end else f"{role} turn text (template): "
                )
                add(
                    content[1],
                    body_end,
                    i,
                    role,
                    PART_TOOL_CALL if loc.calls_end else PART_CONTENT,
                    is_trained,
                    tail_reason + ("trained" if is_trained else "not trained"),
                )
            elif body_end > c0:
                add(c0, body_end, i, role, PART_CONTENT, is_trained, reason)
        if loc.eot is not None:
            eot_trained = is_trained and profile.rules.train_eot
            add(
                loc.eot[0],
                loc.eot[1],
                i,
                role,
                PART_EOT,
                eot_trained,
                "end-of-turn token trained so the model learns to stop"
                if eot_trained
                else "end-of-turn token: not trained",
            )
        add(
            loc.eot[1] if loc.eot else loc.end,
            loc.end,
            i,
            role,
            PART_AFTER,
            False,
            "after the end-of-turn token (template): not trained",
        )
    add_context(
        epilogue_start,
        len(rendered),
        None,
        None,
        PART_EPILOGUE,
        "template text after the last message: not trained",
    )
    return spans, findings


def _carve_moved(spans: list[CharSpan], example: ChatExample, located: list[Located]) -> list[CharSpan]:
    """Give a moved message's text (DeepSeek-V3's gathered system prompts) to that message: it is
    context wherever the template puts it."""
    for i, loc in enumerate(located):
        if loc.moved_at is None or loc.moved_at[1] <= loc.moved_at[0]:
            continue
        a, b = loc.moved_at
        role = example.messages[i].role
        out: list[CharSpan] = []
        for sp in spans:
            if sp.end <= a or sp.start >= b:
                out.append(sp)
                continue
            if sp.start < a:
                out.append(CharSpan(sp.start, a, sp.message_index, sp.role, sp.part, sp.trained, sp.reason))
            lo, hi = max(sp.start, a), min(sp.end, b)
            reason = f"{role} message (the template moves it here): context, not trained"
            if out and out[-1].message_index == i and out[-1].end == lo:
                out[-1].end = hi
            else:
                out.append(CharSpan(lo, hi, i, role, PART_CONTENT, False, reason))
            if sp.end > b:
                out.append(CharSpan(b, sp.end, sp.message_index, sp.role, sp.part, sp.trained, sp.reason))
        spans = out
    return spans


def _apply_generation(spans: list[CharSpan], gen: list[tuple[int, int]], trained: set[int]) -> list[CharSpan]:
    """Re-decide `trained` from the template's {% generation %} blocks (inside trained messages only)."""
    cuts = sorted({p for s, e in gen for p in (s, e)})
    out: list[CharSpan] = []
    for sp in spans:
        points = [sp.start, *(c for c in cuts if sp.start < c < sp.end), sp.end]
        for a, b in itertools.pairwise(points):
            inside = any(s <= a < e for s, e in gen)
            tr = inside and sp.message_index in trained
            if inside:
                reason = "inside the template's {% generation %} block: " + (
                    "trained" if tr else "not trained (message not trained)"
                )
            else:
                reason = "outside the template's {% generation %} blocks: not trained"
            out.append(CharSpan(a, b, sp.message_index, sp.role, sp.part, tr, reason))
    return out


# --- characters to tokens ------------------------------------------------------------------------


def _token_labels(spans: list[CharSpan], offsets: list[tuple[int, int]], n: int) -> list[int]:
    """Per token, the index of the span that labels it (see the module docstring). Spans tile the text
    in order and token starts never decrease, so one forward walk does it."""
    labels: list[int] = []
    append = labels.append
    ends = [sp.end for sp in spans]
    starts = [sp.start for sp in spans]
    trained = [sp.trained for sp in spans]
    j = 0
    last = len(spans) - 1
    for start, end in offsets:
        while j < last and ends[j] <= start:
            j += 1
        if trained[j] or ends[j] >= end:
            append(j)
            continue
        chosen = j
        k = j + 1
        stop = end if end > start else start + 1
        while k <= last and starts[k] < stop:
            if trained[k]:
                chosen = k
                break
            k += 1
        append(chosen)
    return labels


def _span_at(spans: list[CharSpan], starts: list[int], p: int) -> CharSpan:
    return spans[max(bisect_right(starts, p) - 1, 0)]


def _segments(
    rendered: str, ids: list[int], offsets: list[tuple[int, int]], spans: list[CharSpan], labels: list[int]
) -> list[Segment]:
    """Runs of tokens with the same label; each segment's text runs from its first token's start to the
    next segment's, so the texts concatenate to the render."""
    n = len(ids)
    if n == 0:
        return []
    changes = [t for t in range(1, n) if labels[t] != labels[t - 1]]
    segments: list[Segment] = []
    start_token = 0
    start_char = 0
    prev_key: tuple[Any, ...] | None = None
    for t in [*changes, n]:
        sp = spans[labels[start_token]]
        key = (sp.message_index, sp.part, sp.trained, sp.reason)
        if key == prev_key:  # a different span with the same label: one segment
            segments[-1].token_ids.extend(ids[start_token:t])
        else:
            if segments:
                at = max(offsets[start_token][0], start_char)
                segments[-1].text = rendered[start_char:at]
                start_char = at
            segments.append(Segment("", ids[start_token:t], sp.message_index, sp.role, sp.trained, sp.reason))
            prev_key = key
        start_token = t
    segments[-1].text = rendered[start_char:]
    return segments


_SENTINEL = "\ue000"


def _place_empty(
    profile: ModelProfile, msgs: list[dict[str, Any]], tools: Any, text: str, i: int, loc: Located
) -> None:
    """Where an empty message's content sits: render once with a one-character stand-in for it."""
    probe = [*msgs[:i], {**msgs[i], "content": _SENTINEL}, *msgs[i + 1 :]]
    marked = _try_render(profile, probe, tools)
    if marked is None or marked.count(_SENTINEL) != 1 or marked.replace(_SENTINEL, "") != text:
        return
    at = marked.index(_SENTINEL)
    if loc.generation_start is None or at >= loc.generation_start:
        loc.content = (at, at)


# --- findings that need more than one render ------------------------------------------------------


def _rejection(
    profile: ModelProfile, msgs: list[dict[str, Any]], tools: Any, error: TemplateRaised
) -> Finding:
    """Which message the template refuses: the first prefix that raises ends at it."""
    for k in range(1, len(msgs) + 1):
        try:
            render_dicts(profile, msgs[:k], tools)
        except TemplateRaised as e:
            if e.message != error.message and k < len(msgs):
                continue  # a prefix refused for another reason (Qwen3: "No user query found")
            role = msgs[k - 1].get("role")
            return Finding(
                "template_rejects_conversation",
                f"the template refuses the conversation at message {k - 1} ({role}): {error.message}",
                k - 1,
            )
    return Finding(
        "template_rejects_conversation", f"the template refuses the conversation: {error.message}", None
    )


def _rewrites(
    profile: ModelProfile,
    msgs: list[dict[str, Any]],
    tools: Any,
    rendered: str,
    trained: set[int],
    located: list[Located],
    ctl: ControlIndex,
) -> list[Finding]:
    out: list[Finding] = []
    for k in sorted(trained):
        if k == len(msgs) - 1:
            continue
        part = _try_render(profile, msgs[: k + 1], tools)
        if part is None or rendered.startswith(part):
            continue
        loc = located[k]
        turn_end = loc.eot[1] if loc.eot is not None else loc.end
        if part.startswith(rendered[:turn_end]):
            continue  # only what the template writes after the last message differs (Phi-3.5's eos)
        d = 0
        limit = min(len(part), len(rendered))
        while d < limit and part[d] == rendered[d]:
            d += 1
        inside = ctl.containing(d)
        if inside is not None:
            d = inside[0]
        owner = next(
            (i for i, loc in enumerate(located) if loc.start <= d < max(loc.end, loc.start + 1)), None
        )
        where = (
            f"message {k}'s own turn"
            if owner == k
            else (f"message {owner}" if owner is not None else "the prelude")
        )
        out.append(
            Finding(
                "template_rewrites_history",
                f"message {k} (assistant) is trained on text inference never shows: rendered as the last "
                f"turn, the template writes {_quote(part[d : d + 60])} where the whole conversation has "
                f"{_quote(rendered[d : d + 60])} (in {where}); expand_per_turn trains each turn as "
                "inference sees it",
                k,
            )
        )
    return out


def _disagreements(
    spans_mask: list[bool],
    gen_mask: list[bool],
    offsets: list[tuple[int, int]],
    labels: list[int],
    spans: list[CharSpan],
    rendered: str,
) -> list[Finding]:
    by_message: dict[int | None, list[str]] = {}
    for t, (a, b) in enumerate(zip(spans_mask, gen_mask, strict=True)):
        if a != b:
            s, e = offsets[t]
            text = rendered[s:e]
            which = "only the span rule trains" if a else "only {% generation %} trains"
            by_message.setdefault(spans[labels[t]].message_index, []).append(f"{text!r} ({which})")
    out = []
    for i, items in by_message.items():
        shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
        where = f"message {i}" if i is not None else "template text in no message"
        out.append(
            Finding(
                "mask_sources_disagree",
                f"{where}: the two mask sources differ on {len(items)} token(s): {shown}",
                i,
            )
        )
    return out


# --- the entry point -----------------------------------------------------------------------------


def profile_view(profile: ModelProfile, example: ChatExample) -> ProfileResult:
    """TrainingView with target=profile.name, encoding=f"{kind}:{tokenizer_sha256[:12]}", segments that
    concatenate to exactly profile.tokenizer.encode(rendered) ids. billed_tokens == total_tokens."""
    msgs = template_messages(example)
    tools = template_tools(example)
    try:
        rendered: Rendered = render_dicts(profile, msgs, tools)
    except TemplateRaised as e:
        return ProfileResult(None, [_rejection(profile, msgs, tools, e)], None)
    text = rendered.text
    n = len(text)
    ids, offsets = profile.tokenizer.encode(text)
    control_ids = _control_ids(profile)
    control = [offsets[t] for t, i in enumerate(ids) if i in control_ids]
    ctl = ControlIndex(control, tag_spans(text, _tags(profile), control))

    # the prelude: what the template writes with no messages, when the render starts with it, else a bos
    empty = _empty_render(profile) if tools is None else _try_render(profile, [], tools)
    prelude_end = 0
    if empty and text.startswith(empty):
        prelude_end = len(empty)
    elif profile.bos_token and text.startswith(profile.bos_token):
        prelude_end = len(profile.bos_token)
    names = structural_names(example, msgs)
    skeleton_msgs = skeleton_messages(example, msgs)
    skeleton = _try_render(profile, skeleton_msgs, tools) if skeleton_msgs is not None else None
    anchored = anchor_contents(text, example, skeleton) if skeleton is not None else {}
    located = locate(text, example, msgs, ctl, generation_prompts(profile), prelude_end, anchored)
    trained = trained_messages(example, profile)
    for i in trained:
        if not text_of(example.messages[i]) and located[i].content is None:
            _place_empty(profile, msgs, tools, text, i, located[i])
    epilogue = place_turns(text, located, ctl, prelude_end)
    spans, findings = _spans_for(text, example, located, trained, profile, ctl, prelude_end, epilogue, names)
    spans = _carve_moved(spans, example, located)

    for i, (m, loc) in enumerate(zip(example.messages, located, strict=True)):
        body = text_of(m)
        if body and loc.content is None and not loc.moved:
            findings.append(
                Finding(
                    "template_drops_content",
                    f"message {i} ({m.role}): its text {_quote(body, 60)} is not in the rendered text",
                    i,
                )
            )
        elif body and not loc.content_full and loc.content is not None:
            shown = text[loc.content[0] : loc.content[1]]
            at = body.rfind(shown)
            lost = (body[:at] + body[at + len(shown) :]).strip() if at >= 0 else body
            findings.append(
                Finding(
                    "template_drops_content",
                    f"message {i} ({m.role}): only part of its text is rendered; "
                    f"{_quote(lost, 60)} is dropped",
                    i,
                )
            )
        if loc.calls_missing:
            findings.append(
                Finding(
                    "template_drops_content",
                    f"message {i} ({m.role}): tool call {', '.join(loc.calls_missing)} "
                    "is not in the rendered text",
                    i,
                )
            )

    labels = _token_labels(spans, offsets, n)
    final_spans, final_labels = spans, labels
    if has_generation_blocks(profile):
        gen_char_spans = _apply_generation(spans, rendered.generation_spans, trained)
        gen_labels = _token_labels(gen_char_spans, offsets, n)
        findings += _disagreements(
            [spans[i].trained for i in labels],
            [gen_char_spans[i].trained for i in gen_labels],
            offsets,
            labels,
            spans,
            text,
        )
        if profile.rules.mask_source == "generation":
            final_spans, final_labels = gen_char_spans, gen_labels
    mask = [final_spans[i].trained for i in final_labels]

    starts = [sp.start for sp in final_spans]
    for i in sorted(trained):
        loc = located[i]
        if loc.eot is None:
            findings.append(
                Finding(
                    "eot_not_trained",
                    f"message {i} (assistant): no end-of-turn token follows its content in the render, "
                    "so nothing teaches the model to stop",
                    i,
                )
            )
        elif not _span_at(final_spans, starts, loc.eot[0]).trained:
            findings.append(
                Finding(
                    "eot_not_trained",
                    f"message {i} (assistant): its end-of-turn token "
                    f"{_quote(text[loc.eot[0] : loc.eot[1]])} carries no loss under these rules, "
                    "so the model may never learn to stop",
                    i,
                )
            )

    if may_rewrite_history(profile):
        findings += _rewrites(profile, msgs, tools, text, trained, located, ctl)

    segments = _segments(text, ids, offsets, final_spans, final_labels)
    total = len(ids)
    view = TrainingView(
        target=profile.name,
        encoding=profile.encoding_label,
        segments=segments,
        billed_tokens=total,
        trained_tokens=sum(mask),
        total_tokens=total,
        notes=_notes(profile),
    )
    return ProfileResult(view, findings, text)


def _notes(profile: ModelProfile) -> list[str]:
    notes: list[str] = []
    if profile.rules.mask_source == "generation" and not has_generation_blocks(profile):
        notes.append(
            "mask_source generation: this template has no {% generation %} blocks, so the span rule decides"
        )
    if "strftime_now" in profile.chat_template:
        notes.append(
            "the template writes today's date (strftime_now), as transformers renders it: the rendered "
            "text, and so the tokens, change from one day to the next"
        )
    return notes
