"""Exact and near-duplicate detection from per-example summaries (service/core/dedupe.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.core.conversation import ChatExample, Example, PreferenceExample
from service.core.dedupe import (
    SHINGLE,
    DedupeSpec,
    bands_for,
    example_text,
    find_duplicates,
    normalize,
    signature,
    signatures,
    similarity,
    text_signatures,
)
from service.core.pipeline import content_key
from tests.conftest import chat, mtbench_conversations, sharegpt_conversations

ROOT = Path(__file__).resolve().parents[2]
NEAR = DedupeSpec(near=True)


def examples(values: list[dict[str, Any]]) -> list[Example]:
    return [msgspec.convert(v, ChatExample) for v in values]


def summaries(exs: list[Example], num_perm: int = 64) -> tuple[list[bytes], list[bytes | None]]:
    return [content_key(e) for e in exs], signatures(exs, num_perm)


def shingles(text: str) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def one_word_changed(value: dict[str, Any], word: str = "zebra") -> dict[str, Any]:
    """A copy with one word in the middle of the first assistant reply replaced."""
    out: dict[str, Any] = json.loads(json.dumps(value))
    reply = out["messages"][1]
    words = reply["content"].split(" ")
    words[len(words) // 2] = word
    reply["content"] = " ".join(words)
    return out


def test_exact_duplicates_keep_the_first() -> None:
    real = mtbench_conversations()
    # Re-encoded with other whitespace and key order: the same content, so the same key.
    reordered = json.loads(json.dumps({"messages": [dict(reversed(m.items())) for m in real[3]["messages"]]}))
    exs = examples([real[0], real[1], real[0], real[2], reordered, real[3], real[0]])
    keys, _ = summaries(exs)
    result = find_duplicates(keys, None, DedupeSpec())
    assert [(d.index, d.of, d.kind, d.similarity) for d in result.drops] == [
        (2, 0, "exact", 1.0),
        (5, 4, "exact", 1.0),
        (6, 0, "exact", 1.0),
    ]
    assert result.dropped == {2, 5, 6}
    assert result.count("exact") == 3
    assert find_duplicates(keys, None, DedupeSpec(exact=False)).drops == []


def test_near_duplicates_found_on_real_data() -> None:
    originals = mtbench_conversations()
    copies = [one_word_changed(v) for v in originals]
    texts = [example_text(e) for e in examples(originals)]
    copy_texts = [example_text(e) for e in examples(copies)]
    true_j = [jaccard(a, b) for a, b in zip(texts, copy_texts, strict=True)]
    # The originals are distinct conversations: none is flagged against another.
    keys, sigs = summaries(examples(originals))
    assert find_duplicates(keys, sigs, NEAR).drops == []
    # Originals first, then their one-word copies.
    keys, sigs = summaries(examples(originals + copies))
    result = find_duplicates(keys, sigs, NEAR)
    n = len(originals)
    by_index = {d.index: d for d in result.drops}
    assert all(i >= n for i in by_index)  # no original is dropped
    must = [i for i in range(n) if true_j[i] >= 0.85]
    assert len(must) >= 25
    for i in must:
        d = by_index[n + i]
        assert (d.of, d.kind) == (i, "near")
        assert d.similarity >= 0.85
    for d in result.drops:
        assert d.of == d.index - n  # each copy duplicates its own original, nothing else


def test_real_near_duplicates_in_sharegpt_sample() -> None:
    """The FastChat sample repeats its identity chats with small rewordings: found, kept first."""
    values = sharegpt_conversations()
    keys, sigs = summaries(examples(values))
    result = find_duplicates(keys, sigs, NEAR)
    by_index = {d.index: d for d in result.drops}
    assert by_index[24].of == 6  # "What is your name?" vs "What's your name?", the rest identical
    assert by_index[24].similarity >= 0.85
    for d in result.drops:
        assert d.of < d.index
        assert d.of not in by_index  # the kept one of a group is never itself dropped


def test_threshold_respected() -> None:
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(20_000)]
    base = rng.sample(vocab, 400)
    variants: list[str] = []
    for changed in (2, 6, 12, 24, 48, 96):  # words replaced, spread out: lower and lower similarity
        words = list(base)
        for pos in range(0, 400, 400 // changed)[:changed]:
            words[pos] = f"x{pos}-{changed}"
        variants.append(" ".join(words))
    texts = [" ".join(base), *variants]
    keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
    sigs = text_signatures(texts, 128)
    for threshold in (0.5, 0.7, 0.85, 0.95):
        spec = DedupeSpec(near=True, threshold=threshold, num_perm=128)
        result = find_duplicates(keys, sigs, spec)
        dropped = result.dropped
        for i, text in enumerate(variants, start=1):
            j = jaccard(texts[0], text)
            est = similarity(sigs[0] or b"", sigs[i] or b"")
            assert abs(est - j) <= 0.12  # 128 slots: about 4 standard deviations
            if est >= threshold:
                assert i in dropped
            if j < threshold - 0.15:
                assert i not in dropped
        for d in result.drops:
            assert d.similarity >= threshold - 0.15  # via chains it may dip a little below


def test_deterministic_across_hash_seeds() -> None:
    code = (
        "import hashlib\n"
        "from service.core.dedupe import signatures\n"
        "from tests.unit.test_dedupe import examples\n"
        "from tests.conftest import mtbench_conversations\n"
        "sigs = signatures(examples(mtbench_conversations()))\n"
        "print(hashlib.sha256(b''.join(s or b'-' for s in sigs)).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("0", "98765"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    here = hashlib.sha256(b"".join(s or b"-" for s in signatures(examples(mtbench_conversations()))))
    assert digests == {here.hexdigest()}


def test_deterministic_result() -> None:
    values = mtbench_conversations()
    values += [one_word_changed(v) for v in values]
    keys, sigs = summaries(examples(values))
    first = find_duplicates(keys, sigs, NEAR)
    assert first == find_duplicates(list(keys), list(sigs), NEAR)
    assert msgspec.json.encode(first) == msgspec.json.encode(find_duplicates(keys, sigs, NEAR))


@pytest.mark.parametrize("num_perm", [16, 64, 128])
def test_signature_size_fixed(num_perm: int) -> None:
    for text in ("one two three four five six seven eight nine", " ".join(["word"] * 10_000), "α β " * 3000):
        sig = text_signatures([text], num_perm)[0]
        assert sig is not None
        assert len(sig) == num_perm * 4
    assert len(signature(examples(mtbench_conversations())[0], num_perm) or b"") == num_perm * 4


def test_short_texts_fall_back_to_exact_only() -> None:
    assert text_signatures(["", "hi", "one two three four five six seven eight"]) == [None, None, None]
    a = chat(("user", "what is two plus two"), ("assistant", "four"))
    b = chat(("system", "what is two plus two"), ("assistant", "four"))  # same text, other content
    keys, sigs = summaries([a, b, a])
    assert sigs == [None, None, None]
    result = find_duplicates(keys, sigs, NEAR)
    assert [(d.index, d.of, d.kind) for d in result.drops] == [(2, 0, "exact")]


def test_normalization_and_text_of_every_message() -> None:
    assert normalize("  Café\u0301  Au\tLAIT\n\nnow ") == "café\u0301 au lait now"
    assert normalize("e\u0301") == "é"  # NFC
    words = "The quick brown fox jumps over the lazy dog again and again"
    a = chat(("user", words), ("assistant", "Yes."))
    b = chat(("user", "  " + words.upper().replace(" ", "\n ")), ("assistant", "yes."))
    assert signature(a) == signature(b)
    pref = msgspec.convert(
        {
            "input": {"messages": [{"role": "user", "content": "pick one"}]},
            "preferred_output": [{"role": "assistant", "content": "the first"}],
            "non_preferred_output": [{"role": "assistant", "content": "the second"}],
        },
        PreferenceExample,
    )
    assert example_text(pref).split() == ["pick", "one", "the", "first", "the", "second"]


def test_summaries_from_shards_give_the_same_answer() -> None:
    values = mtbench_conversations()
    values += [one_word_changed(v) for v in values]
    exs = examples(values)
    whole = summaries(exs)
    sharded_sigs = [s for lo in range(0, len(exs), 7) for s in signatures(exs[lo : lo + 7])]
    assert sharded_sigs == whole[1]
    assert find_duplicates(whole[0], sharded_sigs, NEAR) == find_duplicates(*whole, NEAR)


def test_bad_inputs() -> None:
    keys, sigs = summaries(examples(mtbench_conversations()[:3]))
    with pytest.raises(ValueError, match="one signature"):
        find_duplicates(keys, None, NEAR)
    with pytest.raises(ValueError, match="bytes, not 512"):
        find_duplicates(keys, sigs, DedupeSpec(near=True, num_perm=128))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"threshold": 1.5}', type=DedupeSpec)
    with pytest.raises(ValueError, match="threshold"):
        DedupeSpec(threshold=0)
    assert bands_for(64, 0.85) == (10, 6)


def test_scales_to_50000_examples(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(30_000)]
    values: list[dict[str, Any]] = []
    planted = set()
    for i in range(50_000):
        if i % 50 == 49:  # every 50th is a copy of the one before with one word changed
            values.append(one_word_changed(values[-1], word=f"changed{i}"))
            planted.add(i)
        else:
            user = " ".join(rng.choices(vocab, k=rng.randint(5, 40)))
            reply = " ".join(rng.choices(vocab, k=rng.randint(120, 200)))
            values.append(
                {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}
            )
    exs = examples(values)
    t0 = time.perf_counter()
    keys = [content_key(e) for e in exs]
    t1 = time.perf_counter()
    sigs = signatures(exs)
    t2 = time.perf_counter()
    result = find_duplicates(keys, sigs, NEAR)
    t3 = time.perf_counter()
    with capsys.disabled():
        print(
            f"\ndedupe of {len(exs):,} examples: content keys {t1 - t0:.2f}s, MinHash signatures "
            f"{t2 - t1:.2f}s, LSH + grouping {t3 - t2:.2f}s, total {t3 - t0:.2f}s; "
            f"{len(result.drops)} near duplicates dropped of {len(planted)} planted"
        )
    assert result.dropped <= planted  # no false positive among 49,000 distinct examples
    assert len(result.dropped) >= 0.95 * len(planted)  # one word in ~150-250 changed: J about 0.95
    assert all(d.of == d.index - 1 for d in result.drops)
