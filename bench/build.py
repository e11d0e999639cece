"""Build throughput with 1 and 2 worker processes, and peak worker memory against dataset size.

    uv run python -m bench.build [--mb 100] [--quick] [--batch-mb 20] [--shard-size 2000] [--repeats 3]

One run generates `--mb` MB of distinct multi-turn chat JSONL from the real turns in tests/data
(the generator of `bench.validate_throughput`), stores it as one dataset of several batches in a
local blob store under a temporary data directory, with the canonical lines the API stores (one
example per line, `msgspec.json.encode(msgspec.convert(example, ChatExample))`), starts a
redis-server child on 127.0.0.1 and then, each time with fresh worker processes (`celery worker
--concurrency 1`, as `tuneset worker` runs them, in their own process group):

(1) throughput: the build of the whole dataset (default recipe, `shard_size` examples per shard,
    no packing) with 1 and with 2 workers; wall time from enqueueing `tuneset.build` to seeing
    the job `succeeded` (polled every 10 ms); MB/s = stored dataset bytes / 1e6 / wall seconds
    of the fastest of `--repeats` runs (interleaved, so drift in a shared machine's speed hits
    both alike); the speed-up is t(1 worker) / t(2 workers), target >= 1.7 on 2 cores. Every
    build must give the same artifacts (SHA-256 per artifact).
(3) memory: the resident set size (VmRSS in /proc/<pid>/status) of every process of every
    worker (the main process and its pool child, found by walking /proc/*/stat), sampled every
    50 ms during each build; the peak per process, and per build stage. The 1-worker build also
    runs on the first half of the dataset (same batch size, so the largest batch is the same);
    the peak of the largest worker process (the highest of the runs) must not grow with the
    dataset (within 15 %); the peaks while shards run and while the finalize runs are shown apart.

Worker start-up is not timed (each worker is ready before the build is enqueued); tokenizer
loading in the pool child on its first task is. Nothing here asserts speed; it prints figures,
and writes them to `--out`/build.json with the workers' logs (bench/out/ is git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import msgspec

from bench.ingest import redis_version, sigterm_exits
from bench.validate_throughput import (
    MAX_PAIRS,
    MIN_PAIRS,
    SEED,
    SYSTEM_PROMPTS,
    conversation,
    draw_pairs,
    turn_pools,
)
from service.core.conversation import ChatExample
from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.run import free_port, start_redis, stop, worker_command
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import TERMINAL, State
from workers.sharded import artifact_digests

ROOT = Path(__file__).parents[1]
OUT_DIR = Path(__file__).parent / "out"  # git-ignored
HOST = "127.0.0.1"
TENANT = "bench"

DEFAULT_MB, QUICK_MB = 100.0, 3.0
DEFAULT_BATCH_MB, QUICK_BATCH_MB = 20.0, 1.0
DEFAULT_SHARD_SIZE, QUICK_SHARD_SIZE = 2000, 250
DEFAULT_REPEATS, QUICK_REPEATS = 3, 1  # each build runs this many times (fresh workers); best wall
WORKERS = (1, 2)
SMALL_FRACTION = 0.5  # (3): the 1-worker build also runs on this share of the dataset

TARGET_SPEEDUP = 1.7  # t(1 worker) / t(2 workers)
TARGET_RSS_GROWTH = 1.15  # peak RSS (whole dataset) / peak RSS (half of it)

SAMPLE_S = 0.05  # RSS sampling period
POLL_S = 0.01  # job status polling period
WORKER_STARTUP_S = 60.0
BUILD_TIMEOUT_S = 1800.0
CLEANUP_S = 60.0  # the finalize removes its work files right after the job succeeds
BUILD_TIME_LIMIT_S = 3600
VISIBILITY_TIMEOUT_S = 7200


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Dataset:
    id: str
    examples: int
    bytes: int
    batches: list[int]  # bytes per batch


def canonical_lines(target_bytes: int, seed: int = SEED) -> Iterator[bytes]:
    """Distinct multi-turn examples from real turns (`bench.validate_throughput`'s generator), as
    the canonical JSONL lines the API stores, until they add up to at least `target_bytes`."""
    rng = random.Random(seed)
    pools = turn_pools()
    seen: set[tuple[int, tuple[tuple[str, int], ...]]] = set()
    size = 0
    while size < target_bytes:
        product = rng.randrange(len(SYSTEM_PROMPTS))
        picks = tuple(draw_pairs(rng, pools, rng.randint(MIN_PAIRS, MAX_PAIRS)))
        if (product, picks) in seen:
            continue
        seen.add((product, picks))
        pairs = [pools[source][i] for source, i in picks]
        example = conversation(SYSTEM_PROMPTS[product], pairs)
        line = msgspec.json.encode(msgspec.convert(example, ChatExample)) + b"\n"
        size += len(line)
        yield line


def store_dataset(
    state: State, blobs: LocalBlobStore, name: str, lines: Sequence[bytes], batch_bytes: int
) -> Dataset:
    """One chat dataset whose batches hold up to `batch_bytes` each (at least one example)."""
    ds = state.create_dataset(TENANT, name, "chat", None)
    out = Dataset(str(ds["id"]), 0, 0, [])
    start = 0
    while start < len(lines):
        end, size = start, 0
        while end < len(lines) and (end == start or size + len(lines[end]) <= batch_bytes):
            size += len(lines[end])
            end += 1
        number = len(out.batches) + 1
        key = f"{TENANT}/{out.id}/batches/b{number}.jsonl"
        blobs.put(key, b"".join(lines[start:end]))
        batch = {"id": f"b{number}", "examples": end - start, "bytes": size, "key": key}
        state.add_batch(TENANT, out.id, batch)
        out.examples += end - start
        out.bytes += size
        out.batches.append(size)
        start = end
    return out


# ---------------------------------------------------------------------------------------------
# Process memory, from /proc


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants alive now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None  # a zombie has no VmRSS


@dataclass
class ProcessPeak:
    worker: int  # which worker (0-based)
    pid: int
    role: str  # "main" or "pool child"
    peak: int = 0  # bytes
    by_stage: dict[str, int] = field(default_factory=dict)


class RssSampler:
    """Samples the RSS of every process of the given workers every SAMPLE_S in a thread; keeps the
    peak per process, overall and per build stage (the stage the main thread last saw)."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.peaks: dict[int, ProcessPeak] = {}
        self.stage = "queued"
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        stage = self.stage
        for worker, root in enumerate(self.roots):
            for pid in process_tree(root):
                rss = rss_bytes(pid)
                if rss is None:
                    continue
                peak = self.peaks.setdefault(
                    pid, ProcessPeak(worker, pid, "main" if pid == root else "pool child")
                )
                peak.peak = max(peak.peak, rss)
                peak.by_stage[stage] = max(peak.by_stage.get(stage, 0), rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # one last sample, after the build

    def largest(self) -> ProcessPeak:
        return max(self.peaks.values(), key=lambda p: p.peak)


# ---------------------------------------------------------------------------------------------
# Workers


def worker_env(settings: Settings) -> dict[str, str]:
    env = {
        **os.environ,
        "TUNESET_REDIS_URL": settings.redis_url,
        "TUNESET_DATA_DIR": str(settings.data_dir),
        "TUNESET_BUILD_TIME_LIMIT_S": str(settings.build_time_limit_s),
        "TUNESET_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
        "TUNESET_BLOB_BACKEND": "local",
    }
    env.pop("TUNESET_BLOB_DIR", None)
    return env


def log_tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown), then whatever is left of the worker's own process group."""
    stop(proc, timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its group id is its pid (start_new_session)


@contextlib.contextmanager
def workers(settings: Settings, n: int, logs: Sequence[Path]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` real `celery worker --concurrency 1` processes, ready; all stopped on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs[:n]:
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        worker_command(settings, concurrency=1, loglevel="info"),
                        env=worker_env(settings),
                        cwd=ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: no stray Ctrl-C, easy cleanup
                    )
                )
        deadline = time.monotonic() + WORKER_STARTUP_S
        for proc, log in zip(procs, logs, strict=False):
            while b"ready." not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {log.name} did not start:\n{log_tail(log)}")
                time.sleep(0.05)
        yield procs
    finally:
        for proc in reversed(procs):
            stop_worker(proc)


# ---------------------------------------------------------------------------------------------
# Builds


@dataclass
class BuildResult:
    label: str
    workers: int
    dataset_bytes: int
    examples: int
    wall_s: float
    mb_per_s: float
    shards: int
    examples_out: int
    artifacts: dict[str, str]  # name -> SHA-256 (the reports' without the job id and date they name)
    artifact_bytes: int
    peak_rss: int  # bytes, the largest worker process
    peak_role: str
    peak_by_stage: dict[str, int]  # the largest per stage, over every worker process
    processes: list[dict[str, Any]]
    samples: int
    stage_s: dict[str, float]  # seconds from enqueueing to the first poll that saw each stage


def run_build(
    settings: Settings,
    state: State,
    dataset: Dataset,
    n: int,
    shard_size: int,
    label: str,
    out_dir: Path,
    outputs: dict[str, Any] | None = None,
) -> BuildResult:
    """One build with fresh workers; `outputs` is the recipe's (default: JSONL and report)."""
    logs = [out_dir / f"build_{label}_worker{i + 1}.log" for i in range(n)]
    blobs = LocalBlobStore(settings.blob_root)
    with workers(settings, n, logs) as procs:
        spec: dict[str, Any] = {"dataset_id": dataset.id, "recipe": {}, "shard_size": shard_size}
        if outputs is not None:
            spec["outputs"] = outputs
        job = state.jobs.create(TENANT, decode_spec("build", spec))
        job_id = job["id"]
        with RssSampler([p.pid for p in procs]) as sampler:
            stage_s: dict[str, float] = {}
            start = time.perf_counter()
            enqueue(settings, BUILD_TASK, [job_id])
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while True:
                now = state.jobs.get(job_id) or {}
                sampler.stage = stage = str(now.get("stage", "?"))
                stage_s.setdefault(stage, time.perf_counter() - start)
                if now.get("status") in TERMINAL:
                    wall = time.perf_counter() - start
                    break
                dead = [log.name for proc, log in zip(procs, logs, strict=True) if proc.poll() is not None]
                if dead or time.monotonic() > deadline:
                    why = f"worker(s) {dead} exited" if dead else f"no end within {BUILD_TIMEOUT_S:.0f} s"
                    raise RuntimeError(f"build {label}: {why}: {now}\n{log_tail(logs[0])}")
                time.sleep(POLL_S)
            if now["status"] != "succeeded":
                raise RuntimeError(f"build {label} ended {now['status']}: {now.get('error')}")
            # the finalize removes its work files just after the job succeeds: memory until then counts
            deadline = time.monotonic() + CLEANUP_S
            while blobs.list(f"{TENANT}/jobs/{job_id}/work"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"build {label}: work files left behind")
                time.sleep(POLL_S)
    result = now["result"]
    largest = sampler.largest()
    by_stage: dict[str, int] = {}
    for p in sampler.peaks.values():
        for stage, rss in p.by_stage.items():
            by_stage[stage] = max(by_stage.get(stage, 0), rss)
    return BuildResult(
        label=label,
        workers=n,
        dataset_bytes=dataset.bytes,
        examples=dataset.examples,
        wall_s=wall,
        mb_per_s=dataset.bytes / 1e6 / wall,
        shards=int(result["shards"]),
        examples_out=int(result["examples_out"]),
        artifacts=artifact_digests(blobs, now),
        artifact_bytes=sum(int(a["size"]) for a in result["artifacts"]),
        peak_rss=largest.peak,
        peak_role=f"worker {largest.worker + 1} {largest.role}",
        peak_by_stage=by_stage,
        processes=[asdict(p) for p in sorted(sampler.peaks.values(), key=lambda p: (p.worker, p.pid))],
        samples=sampler.samples,
        stage_s=stage_s,
    )


# ---------------------------------------------------------------------------------------------
# Reporting


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


STAGES = ("queued", "planning", "shards", "finalizing", "done")


def stage_text(by_stage: dict[str, int]) -> str:
    order = [s for s in STAGES if s in by_stage] + sorted(set(by_stage) - set(STAGES))
    return ", ".join(f"{s} {mib(by_stage[s])}" for s in order)


def best(runs: Sequence[BuildResult]) -> BuildResult:
    return min(runs, key=lambda r: r.wall_s)


def peak(runs: Sequence[BuildResult]) -> BuildResult:
    return max(runs, key=lambda r: r.peak_rss)


def print_build(runs: Sequence[BuildResult]) -> None:
    """The fastest run's figures, every run's wall time, and the highest peak RSS of any run."""
    r, worst = best(runs), peak(runs)
    walls = ", ".join(f"{x.wall_s:.2f}" for x in runs)
    print(
        f"    {r.workers} worker{'s' if r.workers > 1 else ''}: {r.wall_s:.2f} s wall, "
        f"{r.mb_per_s:.2f} MB/s, {r.shards} shards, {r.examples_out:,} examples out, "
        f"peak RSS of the largest worker process {mib(worst.peak_rss)} ({worst.peak_role})"
    )
    print(f"        best of {len(runs)} runs (wall s: {walls}), fresh workers each run")
    order = [s for s in STAGES if s in r.stage_s]
    spans = [
        f"{s} {(r.stage_s[nxt] if nxt else r.wall_s) - r.stage_s[s]:.2f} s"
        for s, nxt in zip(order, [*order[1:], None], strict=True)
        if s != "done"
    ]
    print(f"        time by stage (fastest run, as polled): {', '.join(spans)}")
    print(
        f"        peak RSS by stage (highest run): {stage_text(worst.peak_by_stage)}; {worst.samples} samples"
    )


def environment() -> str:
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"celery {version('celery')}, msgspec {version('msgspec')}, tiktoken {version('tiktoken')}, "
        f"redis-server {redis_version()}, {platform.platform()}, {os.cpu_count()} CPUs"
    )


# ---------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def bench_services(prefix: str) -> Iterator[tuple[Settings, State, LocalBlobStore]]:
    """A redis-server on a free port and a local blob store in a temporary folder, for the
    builds of one benchmark run; stopped and removed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            redis_port = free_port()
            procs.append(start_redis(Path(tmp) / "redis", redis_port))
            settings = Settings(
                redis_url=f"redis://{HOST}:{redis_port}/0",
                data_dir=Path(tmp) / "data",
                blob_backend="local",
                build_time_limit_s=BUILD_TIME_LIMIT_S,
                visibility_timeout_s=VISIBILITY_TIMEOUT_S,
            )
            state = State.from_url(settings.redis_url)
            yield settings, state, LocalBlobStore(settings.blob_root)
            state.r.close()
        finally:
            for proc in reversed(procs):
                stop(proc)


def bench(mb: float, batch_mb: float, shard_size: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    print("tuneset build benchmark: throughput with 1 and 2 workers, peak worker memory")
    print(f"environment: {environment()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lines = list(canonical_lines(int(mb * 1e6)))
    generated = time.perf_counter() - started
    small_lines = lines[: max(1, round(len(lines) * SMALL_FRACTION))]
    batch_bytes = int(batch_mb * 1e6)
    with bench_services("tuneset-bench-build-") as (settings, state, blobs):
        full = store_dataset(state, blobs, "bench chats", lines, batch_bytes)
        small = store_dataset(state, blobs, "bench chats (half)", small_lines, batch_bytes)
        del lines, small_lines
        print(
            f"data: {full.bytes:,} bytes = {full.bytes / 1e6:.2f} MB of canonical chat JSONL, "
            f"{full.examples:,} distinct multi-turn examples (a system prompt from "
            f"{len(SYSTEM_PROMPTS)} products + "
            f"{MIN_PAIRS}-{MAX_PAIRS} real user/assistant pairs each), generated in {generated:.1f} s; "
            f"{len(full.batches)} batches of up to {batch_mb:g} MB; MB = bytes / 1e6"
        )
        print(
            f"setup: redis-server at {settings.redis_url}, local blob store under {settings.blob_root}; "
            f"workers: celery worker --concurrency 1 each; recipe default, shard_size {shard_size:,} "
            f"examples, no packing; wall = enqueue to `succeeded`; RSS sampled every "
            f"{SAMPLE_S * 1e3:.0f} ms over each worker's process tree"
        )
        runs: dict[str, list[BuildResult]] = {"full_1w": [], "full_2w": [], "half_1w": []}
        print(
            f"runs: {repeats} of each build, interleaved (1 worker, 2 workers, 1 worker on the half), "
            f"each with fresh workers"
        )
        for rep in range(1, repeats + 1):
            for label, dataset, n in (("full_1w", full, 1), ("full_2w", full, 2), ("half_1w", small, 1)):
                name = f"{label}_r{rep}"
                runs[label].append(run_build(settings, state, dataset, n, shard_size, name, out_dir))

    print()
    print(f"(1) build throughput on {full.bytes / 1e6:.2f} MB ({full.examples:,} examples)")
    for n in WORKERS:
        print_build(runs[f"full_{n}w"])
    one, two = best(runs["full_1w"]), best(runs["full_2w"])
    speedup = one.wall_s / two.wall_s
    print(
        f"    speed-up (2 vs 1 worker, best runs) = {speedup:.2f}x   target >= {TARGET_SPEEDUP}   "
        f"{verdict(speedup >= TARGET_SPEEDUP)}   ({os.cpu_count()} CPUs)"
    )
    if repeats > 1:
        median_speedup = statistics.median(r.wall_s for r in runs["full_1w"]) / statistics.median(
            r.wall_s for r in runs["full_2w"]
        )
        print(f"        from the median runs: {median_speedup:.2f}x")
    full_runs = runs["full_1w"] + runs["full_2w"]
    same = all(r.artifacts == one.artifacts for r in full_runs)
    shas = ", ".join(f"{name} {sha[:12]}" for name, sha in sorted(one.artifacts.items()))
    if same:
        print(
            f"    check: artifacts identical in all {len(full_runs)} builds with 1 and 2 workers "
            f"(SHA-256: {shas})"
        )
    else:
        print("    check: artifacts DIFFER:")
        for r in full_runs:
            print(f"        {r.label}: {r.artifacts}")

    print()
    print(
        f"(3) peak worker RSS against dataset size (1 worker; the half is the first "
        f"{small.examples:,} examples, {small.bytes / 1e6:.2f} MB, {len(small.batches)} batches "
        f"of up to {batch_mb:g} MB)"
    )
    print_build(runs["half_1w"])
    big, half = peak(runs["full_1w"]), peak(runs["half_1w"])
    growth = big.peak_rss / half.peak_rss
    print(
        f"    peak RSS, largest worker process: {small.bytes / 1e6:.2f} MB -> {mib(half.peak_rss)}, "
        f"{full.bytes / 1e6:.2f} MB -> {mib(big.peak_rss)}; ratio {growth:.3f} for "
        f"{full.bytes / small.bytes:.2f}x the data   target <= {TARGET_RSS_GROWTH}   "
        f"{verdict(growth <= TARGET_RSS_GROWTH)}"
    )
    for stage in ("shards", "finalizing"):
        if stage in big.peak_by_stage and stage in half.peak_by_stage:
            a, b = half.peak_by_stage[stage], big.peak_by_stage[stage]
            print(f"        during {stage:<10}: {mib(a)} -> {mib(b)} (ratio {b / a:.3f})")
    figures: dict[str, Any] = {
        "environment": environment(),
        "data": {
            "bytes": full.bytes,
            "examples": full.examples,
            "batches": full.batches,
            "half_bytes": small.bytes,
            "half_examples": small.examples,
        },
        "shard_size": shard_size,
        "repeats": repeats,
        "builds": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "speedup": speedup,
        "target_speedup": TARGET_SPEEDUP,
        "artifacts_identical": same,
        "rss_growth": growth,
        "target_rss_growth": TARGET_RSS_GROWTH,
    }
    path = out_dir / "build.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"figures written to {path}; worker logs {out_dir}/build_*_worker*.log")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.build", description="Build benchmark.")
    parser.add_argument(
        "--mb", type=float, help=f"data size in MB (default {DEFAULT_MB:g}; {QUICK_MB:g} quick)"
    )
    parser.add_argument("--quick", action="store_true", help="small data, small batches and shards, for CI")
    parser.add_argument(
        "--batch-mb",
        type=float,
        help=f"MB per batch (default {DEFAULT_BATCH_MB:g}; {QUICK_BATCH_MB:g} quick)",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        help=f"examples per shard (default {DEFAULT_SHARD_SIZE}; {QUICK_SHARD_SIZE} quick)",
    )
    parser.add_argument(
        "--repeats", type=int, help=f"runs of each build (default {DEFAULT_REPEATS}; {QUICK_REPEATS} quick)"
    )
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
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    if mb <= 0 or batch_mb <= 0 or shard_size < 1 or repeats < 1:
        parser.error("--mb and --batch-mb must be positive, --shard-size and --repeats at least 1")
    if not Path("/proc/self/status").exists():
        parser.error("this benchmark reads process memory from /proc (Linux only)")
    with sigterm_exits():
        figures = bench(mb, batch_mb, shard_size, repeats, args.out)
    sys.stdout.flush()
    return 0 if figures["artifacts_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
