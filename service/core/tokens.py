"""Tokenizing untrusted text: guarded against pathological input and special-token spellings.

tiktoken 0.14 overflows its regex stack on very long whitespace runs (a million spaces panics
in Rust, which Python sees as a BaseException) and slows down superlinearly on long unbroken
runs. Text longer than `CHUNK_CHARS` is therefore encoded in pieces. Cuts are made before a
single space that sits between two non-space characters: no piece of the cl100k/o200k
pre-tokenizers spans such a point, so the token ids are exactly those of one call. Only text
with no such point in a whole chunk (a run of 100,000 characters without a word break) is cut
blindly, which can shift its count by a token or two at each cut.
"""

from __future__ import annotations

import re
from functools import cache

import tiktoken

from service.core.encodings import BUILTIN_ENCODINGS

CHUNK_CHARS = 100_000
_SEARCH_BACK = 5_000


def _cut_points(text: str) -> list[int]:
    cuts: list[int] = []
    start = 0
    n = len(text)
    while n - start > CHUNK_CHARS:
        end = start + CHUNK_CHARS
        cut = end
        low = max(start + 1, end - _SEARCH_BACK)
        i = text.rfind(" ", low, end)
        while i > low:
            if i + 1 < n and not text[i - 1].isspace() and not text[i + 1].isspace():
                cut = i
                break
            i = text.rfind(" ", low, i)
        cuts.append(cut)
        start = cut
    return cuts


def encode_text(enc: tiktoken.Encoding, text: str) -> list[int]:
    """Token ids of `text` as plain text: special-token spellings are encoded as ordinary text."""
    if len(text) <= CHUNK_CHARS:
        return enc.encode_ordinary(text)
    ids: list[int] = []
    start = 0
    for cut in [*_cut_points(text), len(text)]:
        ids.extend(enc.encode_ordinary(text[start:cut]))
        start = cut
    return ids


def count_text(enc: tiktoken.Encoding, text: str) -> int:
    if len(text) <= CHUNK_CHARS:
        return len(enc.encode_ordinary(text))
    return len(encode_text(enc, text))


@cache
def special_pattern() -> re.Pattern[str]:
    names: set[str] = set()
    for spec in BUILTIN_ENCODINGS.values():
        names.update(name for name in spec.special_tokens if not name.startswith("<|reserved_"))
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"{alternatives}|<\|reserved_\d+\|>")


def special_tokens_in(text: str) -> list[str]:
    """Special-token spellings the provider would reject in training data (e.g. `<|endoftext|>`)."""
    if "<|" not in text:
        return []
    return sorted(set(special_pattern().findall(text)))
