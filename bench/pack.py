"""Packing: time and efficiency of our global best-fit-decreasing, side by side with HF TRL's.

    uv run python -m bench.pack [--docs 1000000] [--seq-len 4096] [--quick]

Document lengths come from a seeded lognormal (mu 5.715, sigma 1.0: mean ~490 tokens, ~491M
tokens per million documents, the setup of the TRL figures in ../shared/anchors.md), rounded,
at least 1, capped at seq_len. `service.core.packing.best_fit_decreasing` packs all of them at
once; the plan is checked (every document exactly once, no sequence over seq_len) outside the
timing. Then, when TRL is importable, `trl.data_utils.pack_dataset(ds, seq_length, strategy="bfd")`
packs a dataset of the SAME lengths (an `input_ids` column of dummy token ids, built as Arrow
directly: a million Python lists of ~490 ints would only time the list building) and both are
printed with the targets: efficiency >= TRL's, time <= TRL's. TRL is never a project
dependency; install it into the venv for the benchmark only (`uv sync` removes it again):

    uv pip install --no-deps trl transformers
    uv pip install datasets huggingface_hub tokenizers safetensors regex packaging pyyaml tqdm

Efficiency = real tokens / (sequences x seq_len); the lower bound is ceil(real tokens / seq_len)
sequences. Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.core.packing import best_fit_decreasing

SEED = 20240604
MU = 5.715
SIGMA = 1.0
DOCS = 1_000_000
QUICK_DOCS = 20_000
SEQ_LEN = 4096
INSTALL = (
    "uv pip install --no-deps trl transformers && "
    "uv pip install datasets huggingface_hub tokenizers safetensors regex packaging pyyaml tqdm"
)


@dataclass(frozen=True)
class Result:
    name: str
    seconds: float
    sequences: int
    tokens: int
    seq_len: int

    @property
    def efficiency(self) -> float:
        return self.tokens / (self.sequences * self.seq_len) if self.sequences else 1.0


def lengths(docs: int, seq_len: int, seed: int = SEED) -> list[int]:
    rng = random.Random(seed)
    return [min(seq_len, max(1, round(rng.lognormvariate(MU, SIGMA)))) for _ in range(docs)]


def check_plan(bins: list[list[int]], lens: Sequence[int], seq_len: int) -> None:
    seen = sorted(i for b in bins for i in b)
    if seen != list(range(len(lens))):
        raise SystemExit("error: the plan does not hold every document exactly once")
    if any(sum(lens[i] for i in b) > seq_len for b in bins):
        raise SystemExit("error: a sequence exceeds seq_len")


def run_ours(lens: list[int], seq_len: int) -> Result:
    start = time.perf_counter()
    bins = best_fit_decreasing(lens, seq_len)
    seconds = time.perf_counter() - start
    check_plan(bins, lens, seq_len)
    return Result("tuneset best_fit_decreasing (global)", seconds, len(bins), sum(lens), seq_len)


def trl_version() -> str | None:
    try:
        from importlib.metadata import version

        importlib.import_module("trl.data_utils")
    except Exception:
        return None
    return version("trl")


def run_trl(lens: list[int], seq_len: int) -> Result:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    # imported by name: TRL and datasets are benchmark-only installs, absent when mypy runs in CI
    datasets: Any = importlib.import_module("datasets")
    pack_dataset: Any = importlib.import_module("trl.data_utils").pack_dataset

    datasets.disable_progress_bars()
    offsets = [0]
    for n in lens:
        offsets.append(offsets[-1] + n)
    values = pa.repeat(pa.scalar(0, pa.int32()), offsets[-1])
    column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    ds: Any = datasets.Dataset.from_dict({"input_ids": column})
    start = time.perf_counter()
    packed: Any = pack_dataset(ds, seq_length=seq_len, strategy="bfd")
    seconds = time.perf_counter() - start
    tokens = int(pc.sum(pc.list_value_length(packed.data.column("input_ids"))).as_py() or 0)
    name = f"TRL {trl_version()} pack_dataset(strategy='bfd')"
    return Result(name, seconds, len(packed), tokens, seq_len)


def report(r: Result, lower_bound: int) -> str:
    return (
        f"{r.name}: {r.seconds:.2f} s, {r.sequences:,} sequences, efficiency {r.efficiency:.5f}, "
        f"{r.sequences - lower_bound:,} over the lower bound"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pack", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help=f"documents (default {DOCS:,})")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS:,} documents")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    args = parser.parse_args(argv)
    docs = args.docs if args.docs is not None else (QUICK_DOCS if args.quick else DOCS)
    seq_len: int = args.seq_len

    print(f"environment: Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    lens = lengths(docs, seq_len)
    total = sum(lens)
    lower_bound = math.ceil(total / seq_len)
    print(
        f"data: {docs:,} documents, lognormal(mu {MU}, sigma {SIGMA}) lengths, seed {SEED}, "
        f"capped at {seq_len}: {total:,} tokens, mean {total / docs:.1f}, max {max(lens)}, "
        f"{sum(n == seq_len for n in lens):,} at the cap"
    )
    print(
        f"lower bound: {lower_bound:,} sequences of {seq_len} "
        f"(efficiency at most {total / (lower_bound * seq_len):.5f})"
    )

    ours = run_ours(lens, seq_len)
    print(report(ours, lower_bound))
    print("check: every document placed exactly once, no sequence over seq_len")

    version = None if args.no_trl else trl_version()
    if version is None:
        if not args.no_trl:
            print(f"TRL: not installed; for the comparison (benchmark only, never a dependency): {INSTALL}")
        return 0
    theirs = run_trl(lens, seq_len)
    print(report(theirs, lower_bound))
    eff_ok = ours.efficiency >= theirs.efficiency
    time_ok = ours.seconds <= theirs.seconds
    print(
        f"target efficiency >= TRL's: {ours.efficiency:.5f} vs {theirs.efficiency:.5f} "
        f"({ours.sequences - theirs.sequences:+,} sequences): {'met' if eff_ok else 'MISSED'}"
    )
    print(
        f"target time <= TRL's: {ours.seconds:.2f} s vs {theirs.seconds:.2f} s "
        f"({theirs.seconds / max(ours.seconds, 1e-9):.1f}x as fast): {'met' if time_ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
