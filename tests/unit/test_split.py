"""Deterministic train/validation split from content keys (service/core/split.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import xxhash

from service.core.conversation import ChatExample
from service.core.pipeline import content_key
from service.core.split import SplitError, SplitSpec, assign, split_score
from tests.conftest import mtbench_conversations

ROOT = Path(__file__).resolve().parents[2]


def keys(n: int, start: int = 0) -> list[bytes]:
    return [xxhash.xxh3_128_digest(f"example {i}".encode()) for i in range(start, start + n)]


def real_keys() -> list[bytes]:
    return [content_key(msgspec.convert(c, ChatExample)) for c in mtbench_conversations()]


def test_score_in_unit_interval_and_depends_on_seed() -> None:
    ks = keys(2000)
    scores = [split_score(7, k) for k in ks]
    assert all(0.0 <= s < 1.0 for s in scores)
    assert scores == [split_score(7, k) for k in ks]
    assert scores != [split_score(8, k) for k in ks]
    assert split_score(-1, ks[0]) != split_score(2**64 - 1, ks[0])  # every integer seed is its own


@pytest.mark.parametrize(
    "spec", [SplitSpec(validation_fraction=0.2, seed=3), SplitSpec(validation_count=300, seed=3)]
)
def test_disjoint_and_deterministic(spec: SplitSpec) -> None:
    ks = keys(1000)
    flags = assign(ks, spec, min_examples=10)
    assert len(flags) == len(ks)
    val = {i for i, v in enumerate(flags) if v}
    train = {i for i, v in enumerate(flags) if not v}
    assert not val & train
    assert val | train == set(range(len(ks)))
    assert assign(ks, spec, min_examples=10) == flags
    assert assign(ks, msgspec.structs.replace(spec, seed=4), min_examples=10) != flags


def test_real_keys_split_deterministically() -> None:
    ks = real_keys()
    flags = assign(ks, SplitSpec(validation_fraction=0.3), min_examples=1)
    assert flags == assign(real_keys(), SplitSpec(validation_fraction=0.3), min_examples=1)
    assert 0 < sum(flags) < len(ks)


_CHILD = """
import json, sys, xxhash
from service.core.split import SplitSpec, assign, split_score
ks = [xxhash.xxh3_128_digest(f"example {i}".encode()) for i in range(500)]
print(json.dumps({
    "scores": [split_score(11, k) for k in ks],
    "fraction": assign(ks, SplitSpec(validation_fraction=0.25, seed=11), 10),
    "count": assign(ks, SplitSpec(validation_count=40, seed=11), 10),
}))
"""


def test_same_across_processes_and_hash_seeds() -> None:
    runs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout))
    ks = keys(500)
    here = {
        "scores": [split_score(11, k) for k in ks],
        "fraction": assign(ks, SplitSpec(validation_fraction=0.25, seed=11), 10),
        "count": assign(ks, SplitSpec(validation_count=40, seed=11), 10),
    }
    assert runs[0] == runs[1] == here


def test_fraction_stable_under_appending_a_batch() -> None:
    spec = SplitSpec(validation_fraction=0.15, seed=1)
    before = keys(2000)
    old = assign(before, spec, min_examples=10)
    for batch in (keys(1, 2000), keys(500, 2000), keys(20000, 2000)):
        new = assign(before + batch, spec, min_examples=10)
        assert new[: len(before)] == old  # every example already placed keeps its side
        assert new[len(before) :] == assign(batch, spec, min_examples=0)  # and the new ones decide alone


def test_count_mode_moves_only_from_validation_to_train_when_appending() -> None:
    """The documented guarantee: validation holds the `count` smallest scores, so appending can
    move an example from validation to train (it is no longer among the smallest), never back;
    an example stays in validation exactly while it is still among the `count` smallest."""
    spec = SplitSpec(validation_count=100, seed=5)
    before = keys(1000)
    old = assign(before, spec, min_examples=10)
    assert sum(old) == 100
    moved_to_train = 0
    for batch in (keys(1, 1000), keys(50, 1000), keys(1000, 1000), keys(9000, 1000)):
        total = before + batch
        new = assign(total, spec, min_examples=10)
        assert sum(new) == 100
        smallest = set(sorted(range(len(total)), key=lambda i: split_score(5, total[i]))[:100])
        for i in range(len(before)):
            if not old[i]:
                assert not new[i]  # train stays train
            else:
                assert new[i] == (i in smallest)  # validation stays validation iff still among the smallest
            moved_to_train += old[i] and not new[i]
    assert moved_to_train > 0  # the guarantee is one-way only: this does happen


def test_count_mode_with_a_tiny_append_keeps_most_of_validation() -> None:
    spec = SplitSpec(validation_count=200, seed=2)
    before = keys(5000)
    old = assign(before, spec, min_examples=10)
    new = assign([*before, *keys(10, 5000)], spec, min_examples=10)
    kept = sum(1 for i in range(len(before)) if old[i] and new[i])
    assert kept >= 200 - 10  # each appended example can push out at most one


def test_minimum_on_each_side() -> None:
    ks = keys(100)
    with pytest.raises(SplitError, match=r"(?s)train.*validation.*at least 10"):
        assign(ks, SplitSpec(validation_fraction=0.02), min_examples=10)
    with pytest.raises(SplitError, match=r"95 example\(s\) in train and 5 in validation"):
        assign(ks, SplitSpec(validation_count=5), min_examples=10)
    with pytest.raises(SplitError, match=r"5 example\(s\) in train and 95 in validation"):
        assign(ks, SplitSpec(validation_count=95), min_examples=10)
    with pytest.raises(SplitError):
        assign(ks, SplitSpec(validation_count=500), min_examples=10)  # nothing left to train on
    flags = assign(ks, SplitSpec(validation_count=10), min_examples=10)
    assert sum(flags) == 10
    assert sum(not f for f in flags) == 90


def test_no_split_is_all_train() -> None:
    assert assign(keys(5), SplitSpec(), min_examples=10) == [False] * 5
    assert not SplitSpec(seed=3).enabled


@pytest.mark.parametrize(
    "spec", [SplitSpec(validation_fraction=0.3, seed=9), SplitSpec(validation_count=60, seed=9)]
)
def test_duplicates_land_on_the_same_side(spec: SplitSpec) -> None:
    base = keys(200)
    ks = [base[(i * 7) % 200] for i in range(600)]  # each key three times, scattered
    flags = assign(ks, spec, min_examples=10)
    side: dict[bytes, bool] = {}
    for k, f in zip(ks, flags, strict=True):
        assert side.setdefault(k, f) == f


def test_count_cut_inside_a_duplicate_group_takes_the_whole_group() -> None:
    base = keys(100)
    ranked = sorted(base, key=lambda k: split_score(0, k))
    ks = [*base, ranked[9], ranked[9]]  # the 10th smallest appears three times
    flags = assign(ks, SplitSpec(validation_count=11), min_examples=1)
    assert sum(flags) == 12  # 9 smaller + the group of three: never fewer than asked, never split
    flags = assign(ks, SplitSpec(validation_count=10), min_examples=1)
    assert sum(flags) == 12


def test_fraction_within_binomial_tolerance() -> None:
    n = 10_000
    ks = keys(n)
    for fraction in (0.01, 0.1, 0.25, 0.5):
        got = sum(assign(ks, SplitSpec(validation_fraction=fraction, seed=42), min_examples=1))
        sd = math.sqrt(n * fraction * (1 - fraction))
        assert abs(got - n * fraction) <= 4 * sd, (fraction, got)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="not both"):
        SplitSpec(validation_fraction=0.1, validation_count=5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SplitSpec(validation_fraction=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        SplitSpec(validation_count=0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"validation_fraction": 0.2, "validation_count": 3}', type=SplitSpec)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"validation_fraction": 0}', type=SplitSpec)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"validation_share": 0.1}', type=SplitSpec)
    spec = msgspec.json.decode(b'{"validation_count": 50, "seed": 7}', type=SplitSpec)
    assert spec == SplitSpec(validation_count=50, seed=7)
