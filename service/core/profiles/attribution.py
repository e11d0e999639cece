"""Which message, and which part of it, every character of a rendered conversation belongs to.

The render is one string; masks need to know, per character, whether it is a message's header,
its content, its end-of-turn marker or text after it, or text the template wrote on its own. This
module finds out from the render itself and the template's own behaviour, never from marker strings
someone typed in a config:

- each message's text is located in the render, in message order (as given, else stripped, else the
  part after a `</think>`, since templates trim and strip reasoning); tool calls by their function
  name and their arguments as `tojson` writes them;
- an assistant turn starts where the template's generation prompt ends: the text
  `add_generation_prompt=True` appends (learned once per template by rendering a probe) is found
  right before the content, so whatever the template has the model write before the content (an empty
  `<think>` block, gpt-oss's `<|channel|>final<|message|>`) is part of the assistant's output;
- the end-of-turn marker is the first special (control) token at or after the end of the content,
  before the next message begins; whitespace right after it is "after the end" of that turn (the
  `\\n` after `<|im_end|>`), and is not trained;
- text before the first message that the template writes without any message (what rendering no
  messages gives, when that is a prefix of the render, or else a leading bos token) is the prelude;
- header or prelude text that is prose rather than markup (three words or more that are not role or
  tool names) is text the template injects, e.g. Llama 3.1's date lines or a default system prompt.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from service.core.conversation import ChatExample, text_of

PART_PRELUDE = "prelude"
PART_HEADER = "header"
PART_GENERATED = "generated"
PART_CONTENT = "content"
PART_TOOL_CALL = "tool_call"
PART_EOT = "end_of_turn"
PART_AFTER = "after_end"
PART_INJECTED = "injected"
PART_EPILOGUE = "epilogue"


@dataclass
class CharSpan:
    start: int
    end: int
    message_index: int | None
    role: str | None
    part: str
    trained: bool
    reason: str


@dataclass
class Located:
    """Where one message landed in the render (None: not found)."""

    content: tuple[int, int] | None = None
    content_full: bool = True  # the whole text was found (not only a stripped or post-</think> part)
    moved: bool = False  # not after the previous message, but elsewhere (DeepSeek-V3 gathers system
    # messages at the top): rendered, so not dropped; its characters stay with the message around them
    moved_at: tuple[int, int] | None = None  # where a moved message's text is, when known exactly
    calls_end: int | None = None  # end of the last tool-call piece found
    calls_missing: list[str] | None = None
    header_start: int | None = None  # where the generation prompt begins (assistants)
    generation_start: int | None = None  # where the assistant's own output begins
    start: int = 0
    end: int = 0
    eot: tuple[int, int] | None = None
    after_end: int = 0


_WORD = re.compile(r"[^\W\d_][\w'.-]*", re.UNICODE)
_STRUCTURAL = frozenset(
    [
        *("system", "user", "assistant", "model", "tool", "tools", "ipython", "developer", "function"),
        *("functions", "to", "json", "commentary", "analysis", "final", "human", "bot", "gpt", "message"),
        *("channel", "constrain", "name"),
    ]
)


def _candidates(text: str, role: str) -> list[tuple[str, bool]]:
    """Forms a message's text can take in a render, with whether the form is the whole text."""
    out: list[tuple[str, bool]] = [(text, True)]
    stripped = text.strip()
    if stripped and stripped != text:
        out.append((stripped, True))
    # templates that write a string through `tojson` (Llama 3.1 and gpt-oss tool results)
    for quoted in (json.dumps(text, ensure_ascii=False), json.dumps(text)):
        if all(quoted != c for c, _ in out):
            out.append((quoted, True))
    if role == "assistant" and "</think>" in text:
        after = text.rsplit("</think>", maxsplit=1)[-1]
        for c in (after.lstrip("\n"), after.strip()):
            if c and all(c != x for x, _ in out):
                out.append((c, False))
    return out


class ControlIndex:
    """The control (special) tokens of a render, by character position."""

    def __init__(self, spans: list[tuple[int, int]], tags: list[tuple[int, int]] | None = None) -> None:
        self.spans = spans
        self.starts = [s for s, _ in spans]
        # tag-shaped template literals (`<end_of_turn>`) the tokenizer does not know as tokens: a
        # fallback end-of-turn marker when the tokenizer is not the template's own
        self.tags = tags or []
        self.tag_starts = [s for s, _ in self.tags]

    def first_at_or_after(self, lo: int, hi: int) -> tuple[int, int] | None:
        i = bisect_left(self.starts, lo)
        if i < len(self.spans) and self.spans[i][0] < hi:
            return self.spans[i]
        i = bisect_left(self.tag_starts, lo)
        if i < len(self.tags) and self.tags[i][0] < hi:
            return self.tags[i]
        return None

    def cuts(self, s: int, e: int) -> bool:
        """A control token is partly inside [s, e) (one wholly inside, or wholly outside, is fine)."""
        for p in (s, e):
            i = bisect_left(self.starts, p)
            if i > 0 and self.spans[i - 1][0] < p < self.spans[i - 1][1]:
                return True
        return False

    def containing(self, p: int) -> tuple[int, int] | None:
        i = bisect_left(self.starts, p + 1)
        if i > 0 and self.spans[i - 1][0] <= p < self.spans[i - 1][1]:
            return self.spans[i - 1]
        return None

    def inside(self, s: int, e: int) -> list[tuple[int, int]]:
        i = bisect_left(self.starts, s)
        out = []
        while i < len(self.spans) and self.spans[i][0] < e:
            out.append(self.spans[i])
            i += 1
        return out


_TAG_SHAPE = re.compile(r"<[^\s<>]{1,40}>|\[/?[A-Z][A-Z_]{1,20}\]")


def template_tags(literals: list[str]) -> list[str]:
    """Tag-shaped strings a template writes literally (`<end_of_turn>`, `</s>`, `[/INST]`)."""
    return sorted({m.group() for lit in literals for m in _TAG_SHAPE.finditer(lit)}, key=len, reverse=True)


def tag_spans(text: str, tags: list[str], known: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if not tags:
        return []
    taken = {s for s, _ in known}
    pattern = re.compile("|".join(re.escape(t) for t in tags))
    return [(m.start(), m.end()) for m in pattern.finditer(text) if m.start() not in taken]


def _bounded(text: str, at: int, end: int, ctl: ControlIndex) -> bool:
    """The occurrence stands on its own: a short text is not taken from inside a longer word."""
    before = at == 0 or not text[at - 1].isalnum()
    after = end >= len(text) or not text[end].isalnum()
    return before and after


def _find(text: str, needle: str, lo: int, hi: int, ctl: ControlIndex, *, word: bool = True) -> int:
    """First occurrence of `needle` in text[lo:hi] that does not cut into a control token (for short
    needles, the first that is not part of a longer word, when there is one)."""
    at = text.find(needle, lo, hi)
    while at >= 0 and ctl.cuts(at, at + len(needle)):
        at = text.find(needle, at + 1, hi)
    if at < 0 or not word or len(needle) >= 16 or _bounded(text, at, at + len(needle), ctl):
        return at
    first = at
    while at >= 0:
        if not ctl.cuts(at, at + len(needle)) and _bounded(text, at, at + len(needle), ctl):
            return at
        at = text.find(needle, at + 1, hi)
    return first


SENTINEL_BASE = 0xE000  # private-use characters: one stands in for each message's text in the skeleton
SENTINEL_MAX = 0x1900


def skeleton_messages(example: ChatExample, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages with each non-empty text replaced by its own sentinel character (None: too many)."""
    if len(messages) > SENTINEL_MAX:
        return None
    out = []
    for k, (m, d) in enumerate(zip(example.messages, messages, strict=True)):
        stand_in = text_of(m) and isinstance(d.get("content"), str)
        out.append({**d, "content": chr(SENTINEL_BASE + k)} if stand_in else d)
    return out


def anchor_contents(
    rendered: str, example: ChatExample, skeleton: str
) -> dict[int, tuple[tuple[int, int], bool]]:
    """Where each message's text is, exactly, read off the skeleton render (every text a sentinel).

    Walking the skeleton in order, the template text between two sentinels must be what the real render
    holds after the previous text; the next text then starts right there, so a short or repeated text
    is never found inside a header, a default system prompt or another message. The walk stops at the
    first place the two renders disagree (a template that branches on the text); messages after it are
    searched for as before. Sentinels out of message order (DeepSeek-V3 gathers system prompts at the
    top) are placed too."""
    texts = [text_of(m) for m in example.messages]
    order: list[tuple[int, int]] = []
    for k, t in enumerate(texts):
        if not t:
            continue
        ch = chr(SENTINEL_BASE + k)
        at = skeleton.find(ch)
        if at < 0 or skeleton.find(ch, at + 1) >= 0:
            return {}
        order.append((at, k))
    order.sort()
    out: dict[int, tuple[tuple[int, int], bool]] = {}
    pos_r = pos_s = 0
    for j, (s_at, k) in enumerate(order):
        piece = skeleton[pos_s:s_at]
        if not rendered.startswith(piece, pos_r):
            break
        start = pos_r + len(piece)
        text = texts[k]
        found: tuple[int, bool] | None = None
        for cand, whole in _candidates(text, example.messages[k].role):
            c = cand
            if c.startswith('"') and piece.endswith('"') and len(c) >= 2 and c.endswith('"'):
                c = c[1:-1]  # written through tojson: the quotes are template text around the sentinel
            if rendered.startswith(c, start):
                found = (len(c), whole)
                break
        if found is None and not text.strip():
            found = (0, True)  # whitespace the template trims away
        if found is None:
            nxt = order[j + 1][0] if j + 1 < len(order) else len(skeleton)
            after = skeleton[s_at + 1 : nxt]
            if after and rendered.startswith(after, start):
                found = (0, False)  # the template writes none of it (Qwen3's reasoning-only history turn)
        if found is None:
            break
        out[k] = ((start, start + found[0]), found[1])
        pos_r, pos_s = start + found[0], s_at + 1
    return out


_ARGS_WINDOW = 256  # characters between a tool call's name and its arguments


def _argument_forms(arguments: Any) -> list[str]:
    if isinstance(arguments, str):
        return [arguments] if arguments else []
    forms = [json.dumps(arguments, ensure_ascii=False), json.dumps(arguments)]
    forms.append(json.dumps(arguments, ensure_ascii=False, separators=(",", ":")))
    return [f for i, f in enumerate(forms) if f not in forms[:i]]


def locate(
    rendered: str,
    example: ChatExample,
    messages: list[dict[str, Any]],
    ctl: ControlIndex,
    gen_prompts: list[str],
    prelude_end: int,
    anchored: dict[int, tuple[tuple[int, int], bool]] | None = None,
) -> list[Located]:
    """Locate every message's content, tool calls and generation start, in order (`anchored`: texts
    placed exactly by `anchor_contents`)."""
    anchored = anchored or {}
    out: list[Located] = []
    cursor = prelude_end
    n = len(rendered)
    for k, (m, d) in enumerate(zip(example.messages, messages, strict=True)):
        loc = Located()
        text = text_of(m)
        lo = cursor
        exact = anchored.get(k)
        if exact is not None and exact[0][0] < cursor:
            loc.moved, loc.moved_at = True, exact[0]
            exact = None
        if m.role == "assistant":
            for prompt in gen_prompts:
                if exact is not None:  # the last generation prompt before the text, in this message's turn
                    at = rendered.rfind(prompt, cursor, exact[0][0])
                    while at >= 0 and ctl.cuts(at, at + len(prompt)):
                        at = rendered.rfind(prompt, cursor, at + len(prompt) - 1)
                else:
                    at = _find(rendered, prompt, cursor, n, ctl, word=False)
                if at >= 0:
                    loc.header_start, loc.generation_start = at, at + len(prompt)
                    break
            if loc.generation_start is not None:
                lo = loc.generation_start
        if exact is not None:
            loc.content, loc.content_full = exact
            cursor = exact[0][1]
        elif text and not loc.moved:
            for c, whole in _candidates(text, m.role):
                at = _find(rendered, c, lo, n, ctl)
                if at >= 0:
                    loc.content = (at, at + len(c))
                    loc.content_full = whole
                    cursor = at + len(c)
                    break
            else:
                loc.moved = any(
                    _find(rendered, c, prelude_end, n, ctl) >= 0 for c, w in _candidates(text, m.role) if w
                )
        calls = d.get("tool_calls") or []
        if calls:
            at_lo = loc.content[1] if loc.content else lo
            missing: list[str] = []
            for call in calls:
                fn = call.get("function", {})
                name = str(fn.get("name", ""))
                at = _find(rendered, name, at_lo, n, ctl) if name else -1
                if at < 0:
                    missing.append(name)
                    continue
                forms = _argument_forms(fn.get("arguments"))
                found = at + len(name)
                for form in forms:
                    a = _find(rendered, form, found, min(n, found + _ARGS_WINDOW + len(form)), ctl)
                    if a >= 0:
                        found = a + len(form)
                        break
                else:
                    if forms and fn.get("arguments") not in ({}, ""):
                        missing.append(name)  # the name alone (a later header, say) is not the call
                        continue
                at_lo = found
                loc.calls_end = at_lo
            cursor = max(cursor, at_lo if loc.calls_end is not None else cursor)
            loc.calls_missing = missing or None
        if loc.content is None and loc.calls_end is None and loc.generation_start is not None:
            cursor = max(cursor, loc.generation_start)
        out.append(loc)
    return out


def _anchor(loc: Located) -> int | None:
    if loc.header_start is not None:
        return loc.header_start
    if loc.content is not None:
        return loc.content[0]
    return None


def place_turns(rendered: str, located: list[Located], ctl: ControlIndex, prelude_end: int) -> int:
    """Fill each message's [start, end), end-of-turn token and after-end; returns the epilogue's start."""
    n = len(rendered)
    anchors = [_anchor(loc) for loc in located]
    next_anchor = [n] * len(located)
    nxt = n
    for i in range(len(located) - 1, -1, -1):
        next_anchor[i] = nxt
        if anchors[i] is not None:
            nxt = anchors[i]  # type: ignore[assignment]
    prev_end = prelude_end
    for i, loc in enumerate(located):
        loc.start = prev_end if loc.header_start is None else min(prev_end, loc.header_start)
        loc.start = max(loc.start, prev_end)
        hi = next_anchor[i]
        ends = [e for e in (loc.content[1] if loc.content else None, loc.calls_end) if e is not None]
        lo = max(ends) if ends else (loc.generation_start if loc.generation_start is not None else None)
        if lo is None:
            # nothing of this message located: it runs to the next message
            loc.end = loc.after_end = max(hi, loc.start)
            prev_end = loc.end
            continue
        eot = ctl.first_at_or_after(lo, hi)
        if eot is not None and eot[1] <= hi:
            loc.eot = eot
            after = eot[1]
            while after < hi and rendered[after].isspace():
                after += 1
            loc.after_end = loc.end = after
        else:
            loc.after_end = loc.end = max(lo, loc.start)
        prev_end = loc.end
    return prev_end


def injected_runs(
    rendered: str, start: int, end: int, ctl: ControlIndex, names: frozenset[str]
) -> list[tuple[int, int]]:
    """Prose inside [start, end): runs between control tokens with 3+ words that are not structure."""
    out: list[tuple[int, int]] = []
    bounds = [start]
    for s, e in ctl.inside(start, end):
        bounds += [s, e]
    bounds.append(end)
    for a, b in zip(bounds[::2], bounds[1::2], strict=False):
        if b - a < 12:
            continue
        words = [w for w in _WORD.finditer(rendered, a, b) if w.group().lower().strip(".-'") not in names]
        words = [w for w in words if w.group().lower().strip(".-'") not in _STRUCTURAL]
        if len(words) >= 3:
            s = words[0].start()
            e = b
            while e > s and rendered[e - 1].isspace():
                e -= 1
            out.append((s, e))
    return out


def structural_names(example: ChatExample, messages: list[dict[str, Any]]) -> frozenset[str]:
    names = {m.role.lower() for m in example.messages}
    for d in messages:
        for call in d.get("tool_calls") or []:
            names.update(str(call.get("function", {}).get("name", "")).lower().split("."))
        if d.get("name"):
            names.add(str(d["name"]).lower())
    for t in example.tools or []:
        names.add(t.function.name.lower())
    for f in example.functions or []:
        names.add(f.name.lower())
    return frozenset(names)
