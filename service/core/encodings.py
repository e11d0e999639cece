"""Offline tiktoken encodings built from the rank files shipped inside the package.

tiktoken's own constructors fetch rank files over HTTP on first use; a service that must
run with no network cannot depend on that, so the ranks ship gzipped beside this module,
their SHA-256 (the same hashes tiktoken checks) is verified on load, and the encodings
are assembled here. Nothing in this module, or anywhere in tuneset, downloads anything.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tiktoken

# Pre-tokenizer patterns, copied from tiktoken_ext.openai_public (tiktoken 0.14);
# tests/unit/test_encodings.py checks they still match the installed tiktoken.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501

ENDOFTEXT = "<|endoftext|>"


@dataclass(frozen=True)
class RankFile:
    """A tiktoken-format rank file and the SHA-256 of its uncompressed bytes."""

    filename: str
    sha256: str


@dataclass(frozen=True)
class EncodingSpec:
    """Everything needed to build a tiktoken Encoding without the network."""

    name: str
    ranks: RankFile
    pattern: str
    special_tokens: dict[str, int] = field(default_factory=dict)
    ranks_path: Path | None = None  # a caller-registered file outside the package


O200K_RANKS = RankFile(
    "o200k_base.tiktoken.gz", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
)
CL100K_RANKS = RankFile(
    "cl100k_base.tiktoken.gz", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
)

_O200K_SPECIAL = {ENDOFTEXT: 199999, "<|endofprompt|>": 200018}
_HARMONY_SPECIAL = {
    **_O200K_SPECIAL,
    "<|startoftext|>": 199998,
    "<|reserved_200000|>": 200000,
    "<|reserved_200001|>": 200001,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|reserved_200004|>": 200004,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|reserved_200009|>": 200009,
    "<|reserved_200010|>": 200010,
    "<|reserved_200011|>": 200011,
    "<|call|>": 200012,
} | {f"<|reserved_{i}|>": i for i in range(200013, 201088)}
_CL100K_SPECIAL = {
    ENDOFTEXT: 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
# The ChatML tokens OpenAI's cl100k chat models use (the historical `cl100k_im` layout).
_CL100K_IM_SPECIAL = {
    **_CL100K_SPECIAL,
    "<|im_start|>": 100264,
    "<|im_end|>": 100265,
    "<|im_sep|>": 100266,
}

BUILTIN_ENCODINGS: dict[str, EncodingSpec] = {
    "o200k_base": EncodingSpec("o200k_base", O200K_RANKS, O200K_PATTERN, _O200K_SPECIAL),
    "o200k_harmony": EncodingSpec("o200k_harmony", O200K_RANKS, O200K_PATTERN, _HARMONY_SPECIAL),
    "cl100k_base": EncodingSpec("cl100k_base", CL100K_RANKS, CL100K_PATTERN, _CL100K_SPECIAL),
    "cl100k_im": EncodingSpec("cl100k_im", CL100K_RANKS, CL100K_PATTERN, _CL100K_IM_SPECIAL),
}


class EncodingError(ValueError):
    """An encoding is unknown or its rank file fails its checksum."""


_lock = threading.Lock()
_ranks_cache: dict[tuple[str, str], dict[bytes, int]] = {}
_encoding_cache: dict[str, tiktoken.Encoding] = {}
_registered: dict[str, EncodingSpec] = {}


def _read_rank_bytes(spec: EncodingSpec) -> bytes:
    if spec.ranks_path is not None:
        data = spec.ranks_path.read_bytes()
    else:
        data = resources.files("service.core.data").joinpath(spec.ranks.filename).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.ranks.sha256:
        raise EncodingError(
            f"rank file {spec.ranks.filename} for {spec.name} has SHA-256 {digest}, "
            f"expected {spec.ranks.sha256}"
        )
    return data


def parse_ranks(data: bytes) -> dict[bytes, int]:
    """Parse tiktoken's rank format: one `base64(token) rank` pair per line."""
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


def register_encoding(spec: EncodingSpec) -> None:
    """Add a caller-supplied tiktoken-format tokenizer (e.g. a Llama 3 `tokenizer.model`)."""
    if spec.name in BUILTIN_ENCODINGS:
        raise EncodingError(f"{spec.name} is a built-in encoding")
    with _lock:
        _registered[spec.name] = spec
        _encoding_cache.pop(spec.name, None)


def encoding_names() -> list[str]:
    return sorted([*BUILTIN_ENCODINGS, *_registered])


def encoding_spec(name: str) -> EncodingSpec:
    """The named encoding's spec (ranks, pattern, special tokens), without building it."""
    spec = BUILTIN_ENCODINGS.get(name) or _registered.get(name)
    if spec is None:
        raise EncodingError(f"unknown encoding {name!r}; known: {', '.join(encoding_names())}")
    return spec


def same_ordinary(name: str, enc: tiktoken.Encoding) -> bool:
    """Whether encoding `name` tokenizes ordinary text exactly as `enc` does: the same
    pre-tokenizer pattern and ranks (special tokens never enter ordinary text). Decided from the
    specs, without building `name` (~0.5 s for o200k_harmony's thousand special tokens), when
    `enc` is one `get_encoding` built; rank files are identified by their checked SHA-256."""
    if _encoding_cache.get(enc.name) is enc:
        mine, theirs = encoding_spec(name), encoding_spec(enc.name)
        return (mine.pattern, mine.ranks.sha256) == (theirs.pattern, theirs.ranks.sha256)
    built = get_encoding(name)
    return built._pat_str == enc._pat_str and (
        built._mergeable_ranks is enc._mergeable_ranks or built._mergeable_ranks == enc._mergeable_ranks
    )


def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, built once per process from local rank files."""
    cached = _encoding_cache.get(name)
    if cached is not None:
        return cached
    spec = encoding_spec(name)
    with _lock:
        cached = _encoding_cache.get(name)
        if cached is not None:
            return cached
        key = (spec.ranks.filename, spec.ranks.sha256)
        ranks = _ranks_cache.get(key)
        if ranks is None:
            ranks = parse_ranks(_read_rank_bytes(spec))
            _ranks_cache[key] = ranks
        enc = tiktoken.Encoding(
            spec.name, pat_str=spec.pattern, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
        )
        _encoding_cache[name] = enc
        return enc


def write_rank_file(name: str, directory: Path) -> Path:
    """Write the uncompressed, checksum-verified rank file (for tools such as openai-harmony)."""
    spec = BUILTIN_ENCODINGS[name]
    target = directory / spec.ranks.filename.removesuffix(".gz")
    target.write_bytes(_read_rank_bytes(spec))
    return target
