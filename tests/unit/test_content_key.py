"""The content key is the same whether its JSON goes to a new bytes object or a reused buffer."""

from __future__ import annotations

import msgspec
import xxhash

from service.core.conversation import ChatExample
from service.core.pipeline import content_key
from tests.conftest import sharegpt_conversations


def test_a_reused_buffer_gives_the_same_keys() -> None:
    buffer = bytearray()
    examples = [msgspec.convert(c, ChatExample) for c in sharegpt_conversations()[:200] if c["messages"]]
    for example in sorted(examples, key=lambda e: -len(msgspec.json.encode(e))):  # the buffer shrinks
        expected = xxhash.xxh3_128_digest(msgspec.json.encode(example))
        assert content_key(example) == expected
        assert content_key(example, buffer) == expected
