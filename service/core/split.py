"""Deterministic train/validation split, decided from content keys alone.

A build runs in shards and a finalize step decides globally from the shards' summaries, so the
split needs nothing but each example's content key (`pipeline.content_key`, 16 bytes). Each
example gets a score in [0, 1) from a hash of (seed, key):

- `validation_fraction=f`: an example is in validation iff its score < f. The decision looks at
  that example only, so appending examples never moves an existing one, and the same content
  lands on the same side in every build with the same seed.
- `validation_count=n`: validation is the n examples with the smallest (score, key). Appending
  can only push the cut-off down, so an example can move from validation to train but never from
  train to validation; an example stays in validation exactly while it is still among the n
  smallest. When the n-th example has duplicates (the same key) just past the cut, they join it
  in validation, so validation can hold slightly more than n examples, never fewer.

Duplicates (equal keys) have equal scores and so always land on the same side; the sides are
disjoint by construction (one boolean per example). The provider's minimum number of examples
is checked on each side; `SplitError` names the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
import xxhash

_SCORE_BITS = 53  # a double holds 53 bits exactly, so every score is < 1.0


class SplitError(ValueError):
    """The split would leave a side with fewer examples than the provider accepts."""


class SplitSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`{validation_fraction | validation_count, seed}`; neither means no validation file."""

    validation_fraction: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] | None = None
    validation_count: Annotated[int, msgspec.Meta(ge=1)] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.validation_fraction is not None and self.validation_count is not None:
            raise ValueError("give validation_fraction or validation_count, not both")
        # Construction bypasses the Meta constraints (only decoding checks them): check here too.
        if self.validation_fraction is not None and not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be between 0 and 1, not {self.validation_fraction}")
        if self.validation_count is not None and self.validation_count < 1:
            raise ValueError(f"validation_count must be at least 1, not {self.validation_count}")

    @property
    def enabled(self) -> bool:
        return self.validation_fraction is not None or self.validation_count is not None


class SplitSide(msgspec.Struct):
    """One side's file: its examples and their tokens."""

    examples: int
    billed_total: int
    trained_total: int


class SplitReport(msgspec.Struct, kw_only=True):
    """What the split did, for the build report: the spec it followed and each side's share.
    The report's token totals and cost are train's; validation's are here."""

    validation_fraction: float | None
    validation_count: int | None
    seed: int
    train: SplitSide
    validation: SplitSide


def split_score(seed: int, key: bytes) -> float:
    """A uniform score in [0, 1) from (seed, content key): the same on every machine and process.

    The seed is written in decimal before the key, so every integer seed (negative or larger
    than 64 bits) gives its own independent ordering."""
    h = xxhash.xxh3_64_intdigest(b"tuneset-split\0" + str(seed).encode() + b"\0" + key)
    return (h >> (64 - _SCORE_BITS)) / (1 << _SCORE_BITS)


def assign(keys: Sequence[bytes], spec: SplitSpec, min_examples: int) -> list[bool]:
    """One flag per example, True for validation, from the content keys in dataset order.

    Without a split every example is train (the overall minimum is the report's concern). With
    one, SplitError when either side would have fewer than `min_examples` examples."""
    if not spec.enabled:
        return [False] * len(keys)
    scores = [split_score(spec.seed, key) for key in keys]
    if spec.validation_fraction is not None:
        fraction = spec.validation_fraction
        out = [score < fraction for score in scores]
        asked = f"validation_fraction {fraction:g}"
    else:
        count = spec.validation_count
        assert count is not None
        if count >= len(keys):
            out = [True] * len(keys)
        else:
            # The cut-off is the count-th smallest (score, key); ties with it are its duplicates.
            cut = sorted(zip(scores, keys, strict=True))[count - 1]
            out = [(score, key) <= cut for score, key in zip(scores, keys, strict=True)]
        asked = f"validation_count {count}"
    n_val = sum(out)
    n_train = len(keys) - n_val
    if n_val < min_examples or n_train < min_examples:
        raise SplitError(
            f"{asked} with seed {spec.seed} puts {n_train} example(s) in train and {n_val} in "
            f"validation out of {len(keys)}; the provider needs at least {min_examples} on each side"
        )
    return out
