"""The shipped rank files load offline, are checksum-verified, and match tiktoken's own definitions."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

from service.core import encodings
from service.core.encodings import BUILTIN_ENCODINGS, EncodingError, EncodingSpec, RankFile, get_encoding


def _tiktoken_definition(name: str) -> dict[str, Any]:
    """tiktoken's own constructor, with its downloader replaced by our (already verified) ranks."""
    ranks = encodings._ranks_cache[
        (BUILTIN_ENCODINGS[name].ranks.filename, BUILTIN_ENCODINGS[name].ranks.sha256)
    ]
    with mock.patch.object(openai_public, "load_tiktoken_bpe", return_value=ranks):
        result: dict[str, Any] = openai_public.ENCODING_CONSTRUCTORS[name]()
    return result


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base", "o200k_harmony"])
def test_encodings_match_tiktoken_definitions(name: str) -> None:
    enc = get_encoding(name)
    ref = _tiktoken_definition(name)
    assert enc._pat_str == ref["pat_str"]
    assert enc._special_tokens == ref["special_tokens"]
    assert enc.n_vocab == max(*ref["mergeable_ranks"].values(), *ref["special_tokens"].values()) + 1


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(encodings, "_encoding_cache", {})
    monkeypatch.setattr(encodings, "_ranks_cache", {})
    enc = get_encoding("o200k_base")
    assert enc.encode_ordinary("hello world") == [24912, 2375]


def test_known_token_ids() -> None:
    assert get_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    harmony = get_encoding("o200k_harmony")
    assert harmony.encode("<|start|><|end|><|message|><|return|>", allowed_special="all") == [
        200006,
        200007,
        200008,
        200002,
    ]
    im = get_encoding("cl100k_im")
    assert im.encode("<|im_start|><|im_end|>", allowed_special="all") == [100264, 100265]


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    good = gzip.decompress(
        (Path(encodings.__file__).parent / "data" / "cl100k_base.tiktoken.gz").read_bytes()
    )
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(good.replace(b" 0\n", b" 1\n", 1))
    spec = EncodingSpec(
        "bad_enc",
        RankFile("bad.tiktoken", BUILTIN_ENCODINGS["cl100k_base"].ranks.sha256),
        encodings.CL100K_PATTERN,
        {},
        ranks_path=bad,
    )
    encodings.register_encoding(spec)
    with pytest.raises(EncodingError, match="SHA-256"):
        get_encoding("bad_enc")


def test_registered_encoding_loads_from_a_file(tmp_path: Path) -> None:
    path = encodings.write_rank_file("cl100k_base", tmp_path)
    spec = EncodingSpec(
        "my_cl100k",
        BUILTIN_ENCODINGS["cl100k_base"].ranks,
        encodings.CL100K_PATTERN,
        {"<|eot|>": 100300},
        ranks_path=path,
    )
    encodings.register_encoding(spec)
    enc = get_encoding("my_cl100k")
    assert enc.encode("hi<|eot|>", allowed_special="all") == [6151, 100300]
    assert "my_cl100k" in encodings.encoding_names()


def test_unknown_encoding() -> None:
    with pytest.raises(EncodingError, match="unknown encoding"):
        get_encoding("nope")
