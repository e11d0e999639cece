"""Pathological text: huge runs are tokenized without a crash and, where a word break exists, exactly."""

from __future__ import annotations

import json

import pytest

from service.core.encodings import get_encoding
from service.core.pipeline import Recipe, run
from service.core.tokens import CHUNK_CHARS, encode_text, special_tokens_in
from tests.conftest import findings


@pytest.mark.parametrize("char", ["a", " ", "^", "\n", "é", "7"])
def test_a_million_repeated_characters_do_not_crash(char: str) -> None:
    line = json.dumps(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": char * 1_000_000}]}
    )
    report = run([line.encode()], Recipe(model="gpt-4o-mini"))
    assert report.examples == 1
    assert report.tokens.trained_total > 1000  # counted, not skipped


def test_chunked_encoding_is_exact_when_word_breaks_exist() -> None:
    enc = get_encoding("o200k_base")
    words = " ".join(f"word{i % 97} punctuation, more-text!" for i in range(20_000))
    assert len(words) > 2 * CHUNK_CHARS
    assert encode_text(enc, words) == enc.encode_ordinary(words)


def test_special_token_text_is_flagged() -> None:
    assert special_tokens_in("hello <|endoftext|> and <|fim_suffix|>") == ["<|endoftext|>", "<|fim_suffix|>"]
    assert special_tokens_in("a <|im_start|> b") == ["<|im_start|>"]
    assert special_tokens_in("plain < | text |>") == []
    line = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "say <|endoftext|>"},
                {"role": "assistant", "content": "no"},
            ]
        }
    )
    report = run([line.encode()], Recipe(model="gpt-4o-mini"), per_example=True)
    assert [p.code for p in findings(report) if p.severity == "error" and p.line == 1] == [
        "special_token_text"
    ]
    assert not report.ok
