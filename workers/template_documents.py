"""Token documents of the built-in templates, straight to ids and mask, for builds at scale.

`service.core.view.render` builds a full training view: per segment its text, its reason and a
Struct, which is what `inspect` shows but several times the cost of tokenizing the text itself.
A build's token outputs need only the ids, which of them are trained and where each message
starts; `TemplateDocuments` walks the same steps as `render` (same pieces, same order, the same
re-tokenization of text runs whose joins the pre-tokenizer could cross, see `view._safe_boundary`)
but keeps per segment only its message index, its trained flag and its token ids, caches the
template's filled pieces and the ids of those that open with a special token (no text run can
cross into them, so their tokens never depend on what came before), and encodes a repeated
system prompt once (datasets repeat one
product's prompt on every conversation, as the accountant notes). A property test checks that
the result equals `token_document(build_view(example, template))` for every built-in template.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

import tiktoken

from service.core.accounting import Accountant
from service.core.conversation import ChatExample, text_of
from service.core.encodings import same_ordinary
from service.core.templates import ChatTemplate, Piece, compile_template
from service.core.tokens import encode_text
from service.core.view import _safe_boundary

SYSTEM_CACHE = 256  # distinct system prompts kept encoded
SYSTEM_CACHE_MIN_CHARS = 64  # shorter ones are cheaper to encode than to look up
PIECE_CACHE = 4096  # filled template pieces kept (per role, name, call id)


# before a message's text: ids, mask, the open text run's last text; after it: ids, mask
_Frame = tuple["array[int]", bytes, str | None, "array[int]", bytes]


class _Seg:
    __slots__ = ("ids", "index", "trained")

    def __init__(self, index: int | None, trained: bool) -> None:
        self.index = index
        self.trained = trained
        self.ids: list[int] = []


class TemplateDocuments:
    """`doc(example)` -> (int32 ids, trained mask bytes, turn starts), as `token_document` of the view."""

    def __init__(self, template: ChatTemplate) -> None:
        self.t = template
        self.c = compile_template(template)
        self._enc: tiktoken.Encoding | None = None  # built on first use, or the accountant's
        self._pieces: dict[tuple[str, tuple[tuple[str, str], ...]], list[Piece]] = {}
        self._special: dict[str, int] = {}
        self._constants: dict[tuple[Piece, ...], tuple[list[int], list[tuple[int, str]]]] = {}
        self._system: OrderedDict[str, list[int]] = OrderedDict()
        self._known: dict[str, array[int]] | None = None
        self._frames: dict[tuple[str, bool, bool], _Frame | None] = {}

    @property
    def enc(self) -> tiktoken.Encoding:
        """What encodes ordinary text: the template's encoding, or the accountant's (`reuse`)."""
        if self._enc is None:
            self._enc = self.c.enc
        return self._enc

    def reuse(self, accountant: Accountant) -> bool:
        """Take the ids the build's accountant computes for each message's text (it has just
        encoded the example) instead of encoding them again, when its encoding splits and merges
        ordinary text exactly as the template's does (the same pre-tokenizer pattern and ranks;
        special tokens never enter ordinary text): then its ids of a text are `encode_text`'s,
        which is what this class would compute. False, and nothing shared, otherwise. Then the
        accountant's encoding also encodes the template's own text, and the template's is never
        built (a fresh worker saves ~0.5 s for harmony's)."""
        theirs = accountant.enc
        if not same_ordinary(self.t.encoding, theirs):
            return False
        if self._enc is None:
            self._enc = theirs
        accountant.keep_ids = True
        self._known = accountant.kept
        return True

    def pieces(self, literal: str, **values: str) -> list[Piece]:
        key = (literal, tuple(values.items()))
        got = self._pieces.get(key)
        if got is None:
            if len(self._pieces) >= PIECE_CACHE:
                self._pieces.clear()
            got = self._pieces[key] = self.c.pieces(literal, **values)
        return got

    def _constant(self, pieces: list[Piece]) -> tuple[list[int], list[tuple[int, str]]]:
        """The ids of template text that opens with a special token (which ends any text run before
        it), and the text run it leaves open, as `add` would leave it: computed once per text."""
        key = tuple(pieces)
        got = self._constants.get(key)
        if got is None:
            ids: list[int] = []
            run: list[tuple[int, str]] = []
            for is_special, text in pieces:
                if is_special:
                    ids.append(self._special_id(text))
                    run.clear()
                elif not run or _safe_boundary(run[-1][1], text):
                    run.append((len(ids), text))
                    ids.extend(encode_text(self.enc, text))
                else:  # one segment: re-tokenizing the run replaces its tail
                    run.append((len(ids), text))
                    del ids[run[0][0] :]
                    ids.extend(encode_text(self.enc, "".join(t for _, t in run)))
            if len(self._constants) >= PIECE_CACHE:  # names and call ids make keys without bound
                self._constants.clear()
            got = self._constants[key] = (ids, run)
        return got

    def _special_id(self, token: str) -> int:
        got = self._special.get(token)
        if got is None:
            got = self._special[token] = self.c.special_id(token)
        return got

    def _encode(self, text: str, cache: bool) -> Sequence[int]:
        known = self._known
        if known is not None:
            kept = known.get(text)
            if kept is not None:
                return kept
        if not cache or len(text) < SYSTEM_CACHE_MIN_CHARS:
            return encode_text(self.enc, text)
        got = self._system.get(text)
        if got is None:
            got = self._system[text] = encode_text(self.enc, text)
            if len(self._system) > SYSTEM_CACHE:
                self._system.popitem(last=False)
        else:
            self._system.move_to_end(text)
        return got

    def doc(self, example: ChatExample) -> tuple[array[int], bytes, array[int]]:
        fast = self._plain(example)
        if fast is not None:
            return fast
        segs = self._render(example)
        ids: array[int] = array("i")
        mask = bytearray()
        turns: array[int] = array("i")
        previous: int | None = None
        for seg in segs:
            n = len(ids)
            if n and seg.index != previous and (not turns or turns[-1] != n):
                turns.append(n)
            previous = seg.index
            if seg.ids:
                ids.extend(seg.ids)
                mask += (b"\x01" if seg.trained else b"\x00") * len(seg.ids)
        return ids, bytes(mask), turns

    def _frame(self, role: str, trained: bool, final: bool) -> _Frame | None:
        """What `_plain` writes around a message's text, for a message of this role, trained flag
        and place: (ids, mask, open tail) before the text, (ids, mask) after it. Computed once:
        when every part opens with a special token, none depends on what came before. None
        when a part does not (or is empty): then `_plain_steps` walks the message piece by piece."""
        key = (role, trained, final)
        if key in self._frames:
            return self._frames[key]
        frame: _Frame | None = None
        t = self.t
        shown = t.role_names.get(role, role)
        if role == "assistant" and t.assistant_header is not None:
            header = self.pieces(t.assistant_header, role=shown)
        else:
            header = self.pieces(t.header, role=shown) + self.pieces(t.header_end)
        parts = [(header, False)]
        if role == "assistant" and t.assistant_generated:
            parts.append((self.pieces(t.assistant_generated), trained))
        end = self.pieces(t.last_end if final and t.last_end else t.end)
        if all(p and p[0][0] for p, _ in parts) and end and end[0][0]:
            ids: list[int] = []
            mask = bytearray()
            tail: str | None = None
            for pieces, flag in parts:
                got, run = self._constant(pieces)
                ids += got
                mask += (b"\x01" if flag else b"\x00") * len(got)
                tail = run[-1][1] if run else None
            ok = True
            if role == "system" and t.system_prefix:
                ok = tail is None or _safe_boundary(tail, t.system_prefix)
                got = encode_text(self.enc, t.system_prefix)
                ids += got
                mask += b"\x00" * len(got)
                tail = t.system_prefix
            close, run = self._constant(end)
            close_ids = list(close)
            close_mask = (b"\x01" if trained and t.train_end else b"\x00") * len(close)
            after = run[-1][1] if run else None
            if t.after_end:
                ok = ok and (after is None or _safe_boundary(after, t.after_end))
                got = encode_text(self.enc, t.after_end)
                close_ids += got
                close_mask += b"\x00" * len(got)
            if ok:
                frame = (array("i", ids), bytes(mask), tail, array("i", close_ids), close_mask)
        self._frames[key] = frame  # three roles, two flags, two places: no bound needed
        return frame

    def _plain(self, example: ChatExample) -> tuple[array[int], bytes, array[int]] | None:
        """`_plain_steps` with each message's frame (`_frame`) written whole: the same result, a
        few array writes per message rather than a call per piece."""
        t = self.t
        ids: array[int] = array("i")
        mask = bytearray()
        turns: array[int] = array("i")
        frames = self._frames
        messages = example.messages
        last = len(messages) - 1
        for i, m in enumerate(messages):
            role = m.role
            if (
                role not in ("system", "user", "assistant")
                or m.name is not None
                or m.tool_call_id is not None
                or m.tool_calls
                or m.function_call is not None
            ):
                return None
            trained = role == "assistant" and m.weight != 0
            final = i == last and role == "assistant" and bool(t.last_end)
            key = (role, trained, final)
            frame = frames[key] if key in frames else self._frame(role, trained, final)
            if frame is None:
                return self._plain_steps(example)
            n = len(ids)
            if n and (not turns or turns[-1] != n):
                turns.append(n)
            open_ids, open_mask, tail, close_ids, close_mask = frame
            ids.extend(open_ids)
            mask += open_mask
            value = text_of(m)
            if value:
                if tail is not None and not _safe_boundary(tail, value):
                    return None
                got = self._encode(value, role == "system")
                ids.extend(got)
                mask += (b"\x01" if trained else b"\x00") * len(got)
            ids.extend(close_ids)
            mask += close_mask
        if t.priming:
            n = len(ids)
            if n and (not turns or turns[-1] != n):
                turns.append(n)
            priming = self.pieces(t.priming)
            if priming:
                if not priming[0][0]:
                    return None
                got, _ = self._constant(priming)
                ids.extend(got)
                mask += b"\x00" * len(got)
        return ids, bytes(mask), turns

    def _plain_steps(self, example: ChatExample) -> tuple[array[int], bytes, array[int]] | None:
        """The common case in one pass, straight into the arrays: messages of system, user and
        assistant with no name, call or call id, under a template whose every piece opens with a
        special token and whose texts all meet their neighbours at safe points (so every text is
        tokenized on its own). None when any of that does not hold: `_render` then does it all."""
        t = self.t
        ids: array[int] = array("i")
        mask = bytearray()
        turns: array[int] = array("i")
        tail: str | None = None  # the last text of the open run, None when a special token closed it

        def const(pieces: list[Piece], trained: bool) -> bool:
            nonlocal tail
            if not pieces:
                return True
            if not pieces[0][0]:
                return False
            got, run = self._constant(pieces)
            ids.extend(got)
            mask.extend((b"\x01" if trained else b"\x00") * len(got))
            tail = run[-1][1] if run else None
            return True

        def text(value: str, trained: bool, system: bool = False) -> bool:
            nonlocal tail
            if not value:
                return True
            if tail is not None and not _safe_boundary(tail, value):
                return False
            got = self._encode(value, system)
            ids.extend(got)
            mask.extend((b"\x01" if trained else b"\x00") * len(got))
            tail = value
            return True

        messages = example.messages
        last = len(messages) - 1
        for i, m in enumerate(messages):
            role = m.role
            if (
                role not in ("system", "user", "assistant")
                or m.name is not None
                or m.tool_call_id is not None
            ):
                return None
            if m.tool_calls or m.function_call is not None:
                return None
            n = len(ids)
            if n and (not turns or turns[-1] != n):
                turns.append(n)
            shown = t.role_names.get(role, role)
            trained = role == "assistant" and m.weight != 0
            if role == "assistant" and t.assistant_header is not None:
                header = self.pieces(t.assistant_header, role=shown)
            else:
                header = self.pieces(t.header, role=shown) + self.pieces(t.header_end)
            if not const(header, False):
                return None
            if (
                role == "assistant"
                and t.assistant_generated
                and not const(self.pieces(t.assistant_generated), trained)
            ):
                return None
            if role == "system" and t.system_prefix and not text(t.system_prefix, False):
                return None
            if not text(text_of(m), trained, system=role == "system"):
                return None
            final = i == last and role == "assistant" and t.last_end
            if not const(self.pieces(t.last_end if final and t.last_end else t.end), trained and t.train_end):
                return None
            if not text(t.after_end, False):
                return None
        if t.priming:
            n = len(ids)
            if n and (not turns or turns[-1] != n):
                turns.append(n)
            if not const(self.pieces(t.priming), False):
                return None
        return ids, bytes(mask), turns

    def _render(self, example: ChatExample) -> list[_Seg]:
        t = self.t
        segs: list[_Seg] = []
        run: list[tuple[int, int, str]] = []  # (segment, where its ids begin in that segment, text)

        def add(pieces: list[Piece], index: int | None, trained: bool, system: bool = False) -> None:
            if not pieces:
                return
            seg = _Seg(index, trained)
            segs.append(seg)
            k = len(segs) - 1
            if pieces[0][0]:  # opens with a special token: the same tokens whatever came before
                ids, tail = self._constant(pieces)
                seg.ids.extend(ids)
                run.clear()
                run.extend((k, start, text) for start, text in tail)
                return
            for is_special, text in pieces:
                if is_special:
                    seg.ids.append(self._special_id(text))
                    run.clear()
                elif not run or _safe_boundary(run[-1][2], text):
                    run.append((k, len(seg.ids), text))
                    seg.ids.extend(self._encode(text, system))
                else:
                    run.append((k, len(seg.ids), text))
                    retokenize()

        def text(value: str, index: int | None, trained: bool, system: bool = False) -> None:
            if value:
                add([(False, value)], index, trained, system)

        def retokenize() -> None:  # view._Builder._retokenize_run, on the lean segments
            enc = self.enc
            new = encode_text(enc, "".join(p[2] for p in run))
            for k, start, _ in run:
                del segs[k].ids[start:]
            ends: list[int] = []
            total = 0
            for _, _, piece in run:
                total += len(piece.encode("utf-8"))
                ends.append(total)
            j = 0
            offset = 0
            for token in new:
                offset += len(enc.decode_single_token_bytes(token))
                while j < len(ends) - 1 and offset > ends[j]:
                    j += 1
                segs[run[j][0]].ids.append(token)

        messages = example.messages
        last = len(messages) - 1
        call_names: dict[str, str] = {}
        for i, m in enumerate(messages):
            role = m.role
            shown = t.role_names.get(role, role)
            trained = role == "assistant" and m.weight != 0  # view._content_reason's flag
            end_trained = trained and t.train_end
            calls = [(tc.id, tc.function.name, tc.function.arguments) for tc in m.tool_calls or []]
            if m.function_call is not None:
                calls.append(("", m.function_call.name, m.function_call.arguments))
            for call_id, name, _ in calls:
                call_names[call_id] = name
            separate_calls = bool(calls) and not t.tool_calls_inline
            if not (role == "assistant" and m.content is None and separate_calls):
                if role == "tool" and t.tool_result_header is not None:
                    name = call_names.get(m.tool_call_id or "", "")
                    header = self.pieces(
                        t.tool_result_header, role=shown, name=name, tool_call_id=m.tool_call_id or ""
                    )
                elif role == "assistant" and t.assistant_header is not None:
                    header = self.pieces(t.assistant_header, role=shown)
                else:
                    header = list(self.pieces(t.header, role=shown))
                    if m.name is not None and t.name_field:
                        header += self.pieces(t.name_field, name=m.name)
                    if m.tool_call_id is not None and t.call_id_field:
                        header += self.pieces(t.call_id_field, tool_call_id=m.tool_call_id)
                    header += self.pieces(t.header_end)
                add(header, i, False)
                if role == "assistant" and t.assistant_generated:
                    add(self.pieces(t.assistant_generated), i, trained)
                if role == "system" and t.system_prefix:
                    text(t.system_prefix, i, False)
                text(text_of(m), i, trained, system=role == "system")
                if t.tool_calls_inline:
                    for _, name, arguments in calls:
                        add(self.pieces(t.tool_call_generated, name=name), i, trained)
                        text(arguments, i, trained)
                final = i == last and role == "assistant" and not separate_calls and t.last_end
                add(self.pieces(t.last_end if final and t.last_end else t.end), i, end_trained)
                text(t.after_end, i, False)
            if separate_calls:
                for _, name, arguments in calls:
                    add(self.pieces(t.tool_call_header), i, False)
                    add(self.pieces(t.tool_call_generated, name=name), i, trained)
                    text(arguments, i, trained)
                    add(self.pieces(t.tool_call_end or t.end), i, end_trained)
                    text(t.after_end, i, False)
        if t.priming:
            add(self.pieces(t.priming), None, False)
        return segs
