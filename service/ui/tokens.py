"""The token view's pieces: each token of a training view with the text it stands for, so the
page can draw token boundaries inside every segment.

A provider model's or a built-in template's view names a tiktoken encoding: its tokens' bytes are
decoded in sequence with one incremental UTF-8 decoder, so a character cut across two tokens is
shown once, on the token that completes it (the earlier one shows nothing, as an empty box).
A model profile's view names its tokenizer (`hf:…`, `tiktoken:…`): each token is decoded alone
by that tokenizer, as `tuneset inspect --profile` prints them.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass

from service.api.schemas import InspectView
from service.core.encodings import get_encoding
from service.core.profiles.model import ModelProfile


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    special: bool


@dataclass(frozen=True)
class SegmentTokens:
    index: int
    role: str | None
    message_index: int | None
    trained: bool
    reason: str
    text: str
    tokens: list[Token]


def _tiktoken_pieces(encoding: str) -> Callable[[list[int]], list[Token]]:
    enc = get_encoding(encoding)
    specials = set(enc._special_tokens.values())

    def pieces(ids: list[int]) -> list[Token]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = []
        for t in ids:
            out.append(Token(t, decoder.decode(enc.decode_single_token_bytes(t)), t in specials))
        return out

    return pieces


def _profile_pieces(profile: ModelProfile) -> Callable[[list[int]], list[Token]]:
    tok = profile.tokenizer
    specials = {tok.token_to_id(s) for s in tok.control_tokens}
    return lambda ids: [Token(t, tok.decode([t]), t in specials) for t in ids]


def view_tokens(view: InspectView, profile: ModelProfile | None = None) -> list[SegmentTokens]:
    """Every segment of `view` with its tokens' texts (`profile`: the profile the view is of)."""
    pieces = _profile_pieces(profile) if profile is not None else _tiktoken_pieces(view.encoding)
    flat = pieces([t for s in view.segments for t in s.token_ids])
    out, at = [], 0
    for i, s in enumerate(view.segments):
        tokens = flat[at : at + len(s.token_ids)]
        at += len(s.token_ids)
        out.append(SegmentTokens(i, s.role, s.message_index, s.trained, s.reason, s.text, tokens))
    return out
