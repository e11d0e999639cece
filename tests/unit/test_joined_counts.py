"""Counting the texts of one role in one tokenizer call (`accounting.JOIN`) gives exactly the
per-message counts: on real conversations and on adversarial texts built from the characters
the pre-tokenizer patterns treat specially (digits, apostrophes, newlines, slashes,
punctuation, marks, CJK, emoji, Unicode spaces)."""

from __future__ import annotations

import random

import msgspec
import pytest
import tiktoken

from service.core.accounting import Accountant
from service.core.conversation import ChatExample
from tests.conftest import mtbench_conversations, sharegpt_conversations

PIECES = [
    *"aZ9 '\t\r\n/.,!?-_()[]<>|\\\"#@$%^&*+=~`:;",
    *("é", "e\u0301", "\u0301", "中", "文", "😀", "\u00a0", "\u2028", "\u3000", "ß", "İ", "ǅ", "٣"),
    *(
        "\x1c",
        "\x85",
        "'s",
        "'LL",
        " \n",
        "\r\n",
        "123",
        "4567",
        "  ",
        "\n\n",
        "<|endoftext|>",
        "<|im_start|>",
    ),
]
ENCODINGS = ["o200k_base", "cl100k_base"]


def adversarial_texts(rng: random.Random) -> list[str]:
    texts = []
    for _ in range(rng.randint(2, 6)):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14))).strip()
        if text:
            texts.append(text)
    return texts


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_joined_counts_equal_the_sum_of_single_counts(encoding: str) -> None:
    accountant = Accountant(encoding)
    rng = random.Random(7)
    for _ in range(4000):
        texts = adversarial_texts(rng)
        if texts:
            assert accountant._joined(texts) == sum(len(accountant.enc.encode_ordinary(t)) for t in texts), (
                texts
            )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_example_counts_match_the_per_message_path(encoding: str) -> None:
    """The hot path (joined calls) against `detail=True` (a call per message) on real chats, on
    texts with surrounding whitespace (not joined) and on weights (joined with the untrained)."""
    accountant = Accountant(encoding)
    rng = random.Random(11)
    values = [c for c in (*mtbench_conversations(), *sharegpt_conversations()) if c["messages"]]
    for value in values:
        messages = [dict(m) for m in value["messages"]]
        for m in messages:
            if rng.random() < 0.1:
                m["content"] = " " + m["content"] + "\n"
            if m["role"] == "assistant" and rng.random() < 0.2:
                m["weight"] = 0
        example = msgspec.convert({"messages": messages}, ChatExample)
        fast, slow = accountant.chat(example), accountant.chat(example, detail=True)
        assert (fast.billed, fast.trained) == (slow.billed, slow.trained)


def test_lone_surrogates_are_counted_as_before() -> None:
    accountant = Accountant("o200k_base")
    texts = ["ok \ud800 then", "fine"]
    assert accountant._joined(texts) == sum(len(accountant.enc.encode_ordinary(t)) for t in texts)


def test_other_encodings_count_a_text_at_a_time() -> None:
    """Patterns other than o200k's and cl100k's are not analysed, so nothing is joined for them."""
    assert Accountant("o200k_base")._join_tokens == 1
    ranks = {bytes([b]): b for b in range(256)}
    custom = tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    accountant = Accountant(custom)
    assert accountant._join_tokens is None
    example = msgspec.convert({"messages": [{"role": "user", "content": "hi"}]}, ChatExample)
    assert accountant.chat(example).billed == accountant.chat(example, detail=True).billed
