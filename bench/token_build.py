"""Token-level builds at scale: peak worker memory against dataset size, throughput against a plain build.

    uv run python -m bench.token_build [--mb 100] [--quick] [--shapes long,short] [--repeats 1]

For each shape of data users have, one dataset of `--mb` MB and one of a quarter of it (its first
examples, the same batch size), stored as the API stores them, built by real Celery workers
(`--concurrency 1`, fresh for every build) on a real redis-server, as `bench.build` does:

- long messages: a product's system prompt and 2-10 real user/assistant pairs (`bench.build`'s
  generator, the data of its figures);
- short messages: hh-rlhf-like, no system prompt and 6-24 short turns cut from the same real
  messages (`bench.validate_throughput`'s short corpus, median message ~120 characters).

Builds, 1 worker each: the token-level build (`openai_jsonl`, `report`, `packed` with seq_len
4096 on the `harmony` template, `tokenized` on the same template) on the quarter and on the whole
dataset, and the same build without the token-level outputs (`openai_jsonl`, `report`) on the
whole dataset. Printed per shape:

(1) memory: the peak RSS of the largest worker process (main and pool child, sampled every 50 ms)
    of the token-level build at a quarter and at the whole size; target: whole <= 1.15 x quarter.
(2) throughput: MB/s = stored dataset bytes / 1e6 / wall seconds (enqueue to `succeeded`), best of
    `--repeats`, with and without the token-level outputs; target: ratio >= 0.5.

Every token-level build must give the same artifacts on every repeat (SHA-256 per artifact).
Nothing here asserts speed; the figures are printed and written to `--out`/token_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec

from bench.build import (
    OUT_DIR,
    SAMPLE_S,
    BuildResult,
    Dataset,
    bench_services,
    best,
    canonical_lines,
    environment,
    mib,
    peak,
    run_build,
    stage_text,
    store_dataset,
    verdict,
)
from bench.ingest import sigterm_exits
from bench.validate_throughput import SEED, short_conversations
from service.core.conversation import ChatExample
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import State

DEFAULT_MB, QUICK_MB = 100.0, 2.0
DEFAULT_BATCH_MB, QUICK_BATCH_MB = 20.0, 0.5
DEFAULT_SHARD_SIZE, QUICK_SHARD_SIZE = 2000, 250
SMALL_FRACTION = 0.25  # the memory comparison: a quarter of the data against all of it
SHAPES = ("long", "short")
SEQ_LEN = 4096
TARGET_RSS_GROWTH = 1.15  # peak RSS (whole) / peak RSS (quarter), token-level build
TARGET_THROUGHPUT = 0.5  # MB/s with token-level outputs / MB/s without

PLAIN_OUTPUTS: dict[str, Any] = {"openai_jsonl": {}, "report": {}}
TOKEN_OUTPUTS: dict[str, Any] = {
    **PLAIN_OUTPUTS,
    "packed": {"seq_len": SEQ_LEN, "template": "harmony"},
    "tokenized": {"template": "harmony"},
}


def short_lines(target_bytes: int, seed: int = SEED) -> Iterator[bytes]:
    """hh-rlhf-like examples (`bench.validate_throughput.short_conversations`), as canonical lines."""
    size = 0
    for messages in short_conversations(seed):
        if size >= target_bytes:
            return
        line = msgspec.json.encode(msgspec.convert({"messages": messages}, ChatExample)) + b"\n"
        size += len(line)
        yield line


def lines_of(shape: str, target_bytes: int) -> list[bytes]:
    return list(canonical_lines(target_bytes) if shape == "long" else short_lines(target_bytes))


def _shape_runs(
    settings: Settings,
    state: State,
    blobs: LocalBlobStore,
    shape: str,
    mb: float,
    batch_mb: float,
    shard_size: int,
    repeats: int,
    out_dir: Path,
) -> dict[str, Any]:
    lines = lines_of(shape, int(mb * 1e6))
    small_lines = lines[: max(1, round(len(lines) * SMALL_FRACTION))]
    batch_bytes = int(batch_mb * 1e6)
    full = store_dataset(state, blobs, f"{shape} messages", lines, batch_bytes)
    small = store_dataset(state, blobs, f"{shape} messages (quarter)", small_lines, batch_bytes)
    messages = sum(len(msgspec.json.decode(line)["messages"]) for line in small_lines)
    del lines, small_lines
    print(
        f"{shape} messages: {full.bytes:,} bytes = {full.bytes / 1e6:.2f} MB, {full.examples:,} examples "
        f"({messages / max(1, small.examples):.1f} messages each); quarter {small.bytes / 1e6:.2f} MB, "
        f"{small.examples:,} examples; batches of up to {batch_mb:g} MB"
    )
    runs: dict[str, list[BuildResult]] = {"token_full": [], "token_quarter": [], "plain_full": []}
    builds: tuple[tuple[str, Dataset, dict[str, Any]], ...] = (
        ("plain_full", full, PLAIN_OUTPUTS),
        ("token_full", full, TOKEN_OUTPUTS),
        ("token_quarter", small, TOKEN_OUTPUTS),
    )
    for rep in range(1, repeats + 1):
        for label, dataset, outputs in builds:
            name = f"{shape}_{label}_r{rep}"
            runs[label].append(run_build(settings, state, dataset, 1, shard_size, name, out_dir, outputs))
    token, plain = best(runs["token_full"]), best(runs["plain_full"])
    big, quarter = peak(runs["token_full"]), peak(runs["token_quarter"])
    growth = big.peak_rss / quarter.peak_rss
    ratio = token.mb_per_s / plain.mb_per_s
    same = all(r.artifacts == token.artifacts for r in runs["token_full"])
    print(
        f"    (1) memory, token-level build: peak RSS of the largest worker process "
        f"{small.bytes / 1e6:.2f} MB -> {mib(quarter.peak_rss)}, {full.bytes / 1e6:.2f} MB -> "
        f"{mib(big.peak_rss)}; ratio {growth:.3f} for {full.bytes / small.bytes:.2f}x the data   "
        f"target <= {TARGET_RSS_GROWTH}   {verdict(growth <= TARGET_RSS_GROWTH)}"
    )
    print(f"        by stage, quarter: {stage_text(quarter.peak_by_stage)}")
    print(f"        by stage, whole:   {stage_text(big.peak_by_stage)}")
    print(
        f"    (2) throughput on {full.bytes / 1e6:.2f} MB, 1 worker: without token-level outputs "
        f"{plain.mb_per_s:.4f} MB/s ({plain.wall_s:.2f} s), with packed + tokenized "
        f"{token.mb_per_s:.4f} MB/s ({token.wall_s:.2f} s); ratio {ratio:.3f}   "
        f"target >= {TARGET_THROUGHPUT}   {verdict(ratio >= TARGET_THROUGHPUT)}"
    )
    spans = dict(token.stage_s)
    order = sorted(spans, key=spans.__getitem__)
    timing = ", ".join(
        f"{s} {(spans[n] if n else token.wall_s) - spans[s]:.2f} s"
        for s, n in zip(order, [*order[1:], None], strict=True)
        if s != "done"
    )
    print(f"        token-level build time by stage: {timing}")
    shas = ", ".join(f"{name} {sha[:12]}" for name, sha in sorted(token.artifacts.items()) if "/" in name)
    if repeats > 1:
        print(
            f"    check: token-level artifacts identical in all {repeats} builds: "
            f"{'yes' if same else 'NO, they DIFFER'}"
        )
    print(f"        token-level artifacts: {shas}")
    return {
        "bytes": full.bytes,
        "examples": full.examples,
        "quarter_bytes": small.bytes,
        "quarter_examples": small.examples,
        "rss_growth": growth,
        "throughput_ratio": ratio,
        "artifacts_identical": same,
        "builds": {k: [asdict(r) for r in v] for k, v in runs.items()},
    }


def bench(
    mb: float, batch_mb: float, shard_size: int, repeats: int, shapes: Sequence[str], out_dir: Path
) -> dict[str, Any]:
    print("tuneset token-level build benchmark: peak worker memory by size, throughput vs a plain build")
    print(f"environment: {environment()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(
        f"setup: 1 worker (celery --concurrency 1, fresh per build), shard_size {shard_size:,}; token-level "
        f"outputs: packed (seq_len {SEQ_LEN}, harmony) + tokenized (harmony); RSS sampled every "
        f"{SAMPLE_S * 1e3:.0f} ms; MB = bytes / 1e6; best of {repeats} run(s)"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"environment": environment(), "shard_size": shard_size, "repeats": repeats}
    with bench_services("tuneset-bench-token-") as (settings, state, blobs):
        for shape in shapes:
            print()
            figures[shape] = _shape_runs(
                settings, state, blobs, shape, mb, batch_mb, shard_size, repeats, out_dir
            )
    path = out_dir / "token_build.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"figures written to {path}")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.token_build", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mb", type=float, help=f"whole data size in MB (default {DEFAULT_MB:g}; {QUICK_MB:g} quick)"
    )
    parser.add_argument("--quick", action="store_true", help="small data, batches and shards, for CI")
    parser.add_argument("--batch-mb", type=float, help=f"MB per batch (default {DEFAULT_BATCH_MB:g})")
    parser.add_argument("--shard-size", type=int, help=f"examples per shard (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each build (default 1)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="long,short (default both)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the figures and worker logs")
    args = parser.parse_args(argv)
    mb = args.mb if args.mb is not None else (QUICK_MB if args.quick else DEFAULT_MB)
    batch_mb = (
        args.batch_mb if args.batch_mb is not None else (QUICK_BATCH_MB if args.quick else DEFAULT_BATCH_MB)
    )
    shard_size = (
        args.shard_size
        if args.shard_size is not None
        else (QUICK_SHARD_SIZE if args.quick else DEFAULT_SHARD_SIZE)
    )
    shapes = [s for s in args.shapes.split(",") if s]
    if any(s not in SHAPES for s in shapes) or not shapes:
        parser.error(f"--shapes takes a comma-separated list of {', '.join(SHAPES)}")
    if mb <= 0 or batch_mb <= 0 or shard_size < 1 or args.repeats < 1:
        parser.error("--mb and --batch-mb must be positive, --shard-size and --repeats at least 1")
    if not Path("/proc/self/status").exists():
        parser.error("this benchmark reads process memory from /proc (Linux only)")
    started = time.perf_counter()
    with sigterm_exits():
        figures = bench(mb, batch_mb, shard_size, args.repeats, shapes, args.out)
    print(f"total {time.perf_counter() - started:.0f} s")
    sys.stdout.flush()
    return 0 if all(figures[s]["artifacts_identical"] for s in shapes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
