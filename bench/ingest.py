"""Batch ingestion: MB/s of JSONL accepted and stored, and the latency of 100-example batches.

    uv run python -m bench.ingest [--quick] [--clients 16] [--batches N]

One run starts the real service on 127.0.0.1: a redis-server child (`service.run.start_redis`,
AOF on, data in a temporary directory) and the API as a real server in a child process
(`uvicorn service.api.app:create_app --factory`, one process, the local blob store in the same
temporary directory). It creates an API key and one dataset per client, then:

(1) concurrent: `--clients` clients (one asyncio task and one `httpx.AsyncClient` each) push
    `--batches` batches each to their own dataset, all at once, after a few warm-up batches;
(2) single client: one client pushes as many batches as all of (1) together (`--clients` x
    `--batches`, fresh bodies of the same make), one after another, for comparison.

Every batch is 100 real multi-turn conversations (MT-Bench and ShareGPT, from tests/data) as
`application/jsonl`, and every body is distinct: the first user message of each example carries
the batch's number and the example's place in it. Bodies are encoded before the clock starts.

Latency is the time from sending a request to having its whole response. Throughput is the
bytes of the request bodies answered 201 (and, separately, the bytes the server stored), over
the wall time of the measured phase, from its first request to its last response; MB = bytes /
1e6. Any answer other than 201 is an error, counted and printed. Afterwards each dataset's
`examples`, `batches` and `bytes` (GET /v1/datasets/{id}) and its blobs on disk are checked
against what was sent and acknowledged. Nothing here asserts speed; it prints figures. The
figures also go to `--out`/ingest.json (bench/out/ is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from service.run import free_port, redis_server_binary, start_redis, stop
from service.store.state import State
from tests.conftest import mtbench_conversations, sharegpt_conversations

ROOT = Path(__file__).parents[1]
OUT_DIR = Path(__file__).parent / "out"  # git-ignored
HOST = "127.0.0.1"
TENANT = "bench"
SEED = 20240611
BATCH_EXAMPLES = 100
DEFAULT_CLIENTS, DEFAULT_BATCHES, DEFAULT_WARMUP = 16, 25, 2
QUICK_CLIENTS, QUICK_BATCHES, QUICK_WARMUP = 4, 3, 1
SERVER_STARTUP_S = 60.0
REQUEST_TIMEOUT_S = 120.0
JSONL = "application/jsonl"


# ---------------------------------------------------------------------------------------------
# Data


def conversation_pool(seed: int = SEED) -> list[dict[str, Any]]:
    """Every real conversation of tests/data (MT-Bench and ShareGPT), in one seeded order."""
    pool = mtbench_conversations() + sharegpt_conversations()
    random.Random(seed).shuffle(pool)
    return pool


def batch_body(pool: Sequence[dict[str, Any]], number: int, size: int = BATCH_EXAMPLES) -> bytes:
    """Batch `number`: `size` conversations of the pool (rotating), each made distinct by a mark
    on its first user message, as JSONL."""
    lines = []
    for i in range(size):
        messages = [dict(m) for m in pool[(number * size + i) % len(pool)]["messages"]]
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"] = f"{first_user['content']}\n\n(batch {number}, example {i + 1})"
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False).encode())
    return b"\n".join(lines) + b"\n"


class Batches:
    """Distinct batch bodies, numbered from 0 across every phase of one run."""

    def __init__(self, pool: Sequence[dict[str, Any]], size: int = BATCH_EXAMPLES) -> None:
        self.pool, self.size, self.next = pool, size, 0

    def take(self, n: int) -> list[bytes]:
        bodies = [batch_body(self.pool, self.next + i, self.size) for i in range(n)]
        self.next += n
        return bodies


# ---------------------------------------------------------------------------------------------
# The service: redis-server and the API, each a child process on 127.0.0.1


@dataclass
class Service:
    base_url: str
    api_key: str
    data_dir: Path
    redis_url: str
    api: subprocess.Popen[bytes]


def wait_live(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_STARTUP_S
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the API exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
                )
            try:
                if client.get("/livez").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer /livez:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)


def start_api(redis_url: str, data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TUNESET_REDIS_URL": redis_url,
        "TUNESET_DATA_DIR": str(data_dir),
        "TUNESET_BLOB_BACKEND": "local",
    }
    env.pop("TUNESET_BLOB_DIR", None)
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.api.app:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def redis_version() -> str:
    try:
        out = subprocess.run(
            [redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except Exception as e:
        return f"unknown ({type(e).__name__})"
    words = out.split()
    found = next((w for w in words if w.startswith("v=")), None)
    return found[2:] if found else out.strip() or "unknown"


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Clients


@dataclass
class ClientResult:
    dataset_id: str
    latencies: list[float] = field(default_factory=list)  # seconds, 201 answers only
    sent_bytes: int = 0  # request bodies answered 201
    stored_bytes: int = 0  # the `bytes` of those answers: canonical JSONL the server stored
    examples: int = 0  # the `examples` of all 201 answers, warm-up included
    measured_examples: int = 0  # the `examples` of the measured phase's 201 answers
    batches: int = 0
    errors: list[str] = field(default_factory=list)


async def push(client: httpx.AsyncClient, result: ClientResult, body: bytes, measure: bool) -> None:
    start = time.perf_counter()
    try:
        response = await client.post(
            f"/v1/datasets/{result.dataset_id}/batches", content=body, headers={"Content-Type": JSONL}
        )
    except httpx.HTTPError as e:
        result.errors.append(f"{type(e).__name__}: {e}")
        return
    elapsed = time.perf_counter() - start
    if response.status_code != 201:
        result.errors.append(f"{response.status_code}: {response.text[:300]}")
        return
    answer = response.json()
    result.batches += 1
    result.examples += int(answer["examples"])
    if measure:
        result.latencies.append(elapsed)
        result.sent_bytes += len(body)
        result.stored_bytes += int(answer["bytes"])
        result.measured_examples += int(answer["examples"])


async def run_client(
    client: httpx.AsyncClient, result: ClientResult, bodies: Sequence[bytes], measure: bool
) -> None:
    for body in bodies:
        await push(client, result, body, measure)


@dataclass
class Phase:
    clients: int
    batches: int  # measured batches per client
    warmup: int  # warm-up batches per client
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    sent_bytes: int
    stored_bytes: int
    examples: int
    ok: int
    errors: int
    latency_ms: dict[str, float]
    mb_per_s: float
    stored_mb_per_s: float
    examples_per_s: float
    check: list[str]  # mismatches; empty when every dataset holds what was acknowledged
    checked_examples: int
    error_samples: list[str] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_phase(
    service: Service, batches: Batches, n_clients: int, n_batches: int, n_warmup: int, label: str
) -> Phase:
    """Encode the bodies (before the event loop, so Ctrl-C is prompt), then push them."""
    warm = [batches.take(n_warmup) for _ in range(n_clients)]
    measured = [batches.take(n_batches) for _ in range(n_clients)]
    return asyncio.run(_run_phase(service, warm, measured, label))


async def _run_phase(
    service: Service, warm: Sequence[Sequence[bytes]], measured: Sequence[Sequence[bytes]], label: str
) -> Phase:
    n_clients, n_warmup, n_batches = len(measured), len(warm[0]), len(measured[0])
    auth = {"Authorization": f"Bearer {service.api_key}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # one connection per client
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    clients = [
        httpx.AsyncClient(base_url=service.base_url, headers=auth, limits=limits, timeout=timeout)
        for _ in range(n_clients)
    ]
    try:
        results = []
        for i, client in enumerate(clients):
            created = await client.post("/v1/datasets", json={"name": f"{label}-{i}", "kind": "chat"})
            if created.status_code != 201:
                raise RuntimeError(f"creating a dataset answered {created.status_code}: {created.text}")
            results.append(ClientResult(dataset_id=str(created.json()["id"])))

        await asyncio.gather(
            *(run_client(c, r, b, False) for c, r, b in zip(clients, results, warm, strict=True))
        )

        server_cpu = process_cpu_seconds(service.api.pid)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(
            *(run_client(c, r, b, True) for c, r, b in zip(clients, results, measured, strict=True))
        )
        wall_s = time.perf_counter() - wall
        client_cpu_s = time.process_time() - cpu
        server_after = process_cpu_seconds(service.api.pid)
        server_cpu_s = (
            server_after - server_cpu if server_cpu is not None and server_after is not None else None
        )

        mismatches, checked_examples = await check_stored(clients[0], service, results)
    finally:
        for client in clients:
            await client.aclose()

    latencies = sorted(x for r in results for x in r.latencies)
    sent = sum(r.sent_bytes for r in results)
    stored = sum(r.stored_bytes for r in results)
    examples = sum(r.measured_examples for r in results)
    errors = [e for r in results for e in r.errors]
    return Phase(
        clients=n_clients,
        batches=n_batches,
        warmup=n_warmup,
        wall_s=wall_s,
        client_cpu_s=client_cpu_s,
        server_cpu_s=server_cpu_s,
        sent_bytes=sent,
        stored_bytes=stored,
        examples=examples,
        ok=len(latencies),
        errors=len(errors),  # warm-up errors count too
        latency_ms={
            "p50": percentile(latencies, 50) * 1e3,
            "p90": percentile(latencies, 90) * 1e3,
            "p99": percentile(latencies, 99) * 1e3,
            "max": (latencies[-1] if latencies else float("nan")) * 1e3,
        },
        mb_per_s=sent / 1e6 / wall_s,
        stored_mb_per_s=stored / 1e6 / wall_s,
        examples_per_s=examples / wall_s,
        check=mismatches,
        checked_examples=checked_examples,
        error_samples=errors[:5],
    )


def blob_bytes(service: Service, dataset_id: str) -> tuple[int, int]:
    """Files and bytes of a dataset's batch blobs in the local blob store."""
    files = list((service.data_dir / "blobs" / TENANT / dataset_id / "batches").glob("*.jsonl"))
    return len(files), sum(f.stat().st_size for f in files)


async def check_stored(
    client: httpx.AsyncClient, service: Service, results: Sequence[ClientResult]
) -> tuple[list[str], int]:
    """Each dataset's counts (GET /v1/datasets/{id}) and blobs against what its client got 201 for."""
    mismatches: list[str] = []
    total = 0
    for r in results:
        response = await client.get(f"/v1/datasets/{r.dataset_id}")
        if response.status_code != 200:
            mismatches.append(f"{r.dataset_id}: GET answered {response.status_code}")
            continue
        ds = response.json()
        total += int(ds["examples"])
        sent_examples = r.batches * BATCH_EXAMPLES
        if ds["examples"] != sent_examples or ds["examples"] != r.examples or ds["batches"] != r.batches:
            mismatches.append(
                f"{r.dataset_id}: {ds['examples']} examples in {ds['batches']} batches stored, "
                f"{sent_examples} in {r.batches} batches acknowledged"
            )
        files, size = blob_bytes(service, r.dataset_id)
        if files != ds["batches"] or size != ds["bytes"]:
            mismatches.append(
                f"{r.dataset_id}: {files} blobs of {size} bytes on disk, "
                f"the dataset says {ds['batches']} of {ds['bytes']}"
            )
    return mismatches, total


# ---------------------------------------------------------------------------------------------
# Reporting


def print_phase(title: str, phase: Phase) -> None:
    print()
    print(
        f"{title}: {phase.clients} client{'s' if phase.clients != 1 else ''} x {phase.batches} batches "
        f"(after {phase.warmup} warm-up batch{'es' if phase.warmup != 1 else ''} each)"
    )
    print(
        f"    batches: {phase.ok:,} stored (201), {phase.errors} errors; "
        f"{phase.sent_bytes:,} bytes of JSONL in {phase.wall_s:.3f} s"
    )
    for sample in phase.error_samples:
        print(f"    error: {sample}")
    print(
        f"    throughput: {phase.mb_per_s:.2f} MB/s of JSONL accepted, "
        f"{phase.examples_per_s:,.0f} examples/s, {phase.ok / phase.wall_s:.1f} batches/s; "
        f"stored {phase.stored_mb_per_s:.2f} MB/s "
        f"({phase.stored_bytes:,} bytes of canonical JSONL)"
    )
    lat = phase.latency_ms
    print(
        f"    latency: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"max {lat['max']:.1f} ms"
    )
    server = f"{phase.server_cpu_s:.2f} s" if phase.server_cpu_s is not None else "n/a"
    print(
        f"    CPU during the measured phase: API process {server}, benchmark clients "
        f"{phase.client_cpu_s:.2f} s (of {phase.wall_s:.2f} s wall)"
    )
    if phase.check:
        print(f"    check: stored data DIFFERS in {len(phase.check)} place(s):")
        for line in phase.check:
            print(f"        {line}")
    else:
        print(
            f"    check: stored data matches: {phase.clients} dataset(s) hold the {phase.checked_examples:,} "
            f"examples acknowledged (GET /v1/datasets/{{id}}: examples, batches, bytes; blobs on disk)"
        )


def environment() -> str:
    return (
        f"environment: Python {platform.python_version()} ({platform.python_implementation()}), "
        f"litestar {version('litestar')}, msgspec {version('msgspec')}, uvicorn {version('uvicorn')}, "
        f"httpx {version('httpx')}, redis-server {redis_version()}, {platform.platform()}, "
        f"{os.cpu_count()} CPUs"
    )


# ---------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def service(out_dir: Path) -> Iterator[Service]:
    """redis-server and the API as children on free 127.0.0.1 ports; both stopped on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tuneset-bench-ingest-") as tmp:
        data_dir = Path(tmp) / "data"
        try:
            redis_port = free_port()
            procs.append(start_redis(Path(tmp) / "redis", redis_port))
            redis_url = f"redis://{HOST}:{redis_port}/0"
            state = State.from_url(redis_url)
            try:
                api_key = state.create_key(TENANT)
            finally:
                state.r.close()
            port = free_port()
            log = out_dir / "ingest_api.log"
            api = start_api(redis_url, data_dir, port, log)
            procs.append(api)
            base_url = f"http://{HOST}:{port}"
            wait_live(base_url, api, log)
            yield Service(base_url, api_key, data_dir, redis_url, api)
        finally:
            for proc in reversed(procs):
                stop(proc)


def bench(n_clients: int, n_batches: int, n_warmup: int, out_dir: Path) -> dict[str, Any]:
    print("tuneset batch ingestion benchmark")
    print(environment())
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = conversation_pool()
    batches = Batches(pool)
    sample = [len(batch_body(pool, i)) for i in range(math.ceil(len(pool) / BATCH_EXAMPLES) * 4)]
    n_mtbench = len(mtbench_conversations())
    print(
        f"data: batches of {BATCH_EXAMPLES} examples from {len(pool)} real multi-turn conversations "
        f"({n_mtbench} MT-Bench, {len(pool) - n_mtbench} ShareGPT, rotating), every body distinct; "
        f"{min(sample):,}-{max(sample):,} bytes of {JSONL} per batch "
        f"(mean {sum(sample) / len(sample):,.0f}); MB = bytes / 1e6"
    )
    with service(out_dir) as svc:
        print(
            f"server: uvicorn service.api.app:create_app --factory at {svc.base_url} (1 process), "
            f"redis-server at {svc.redis_url} (AOF everysec), local blob store under {svc.data_dir}; "
            f"log {out_dir / 'ingest_api.log'}"
        )
        print(
            "latency = from sending a request to having its whole response; throughput = bytes of bodies "
            "answered 201 / wall time of the measured phase (first request to last response)"
        )
        concurrent = run_phase(svc, batches, n_clients, n_batches, n_warmup, "concurrent")
        print_phase("(1) concurrent", concurrent)
        # the same number of batches as (1), of the same make, one after another
        single = run_phase(svc, batches, 1, n_clients * n_batches, n_warmup, "single")
        print_phase("(2) single client", single)
    ratio = concurrent.mb_per_s / single.mb_per_s if single.mb_per_s else float("nan")
    print()
    print(f"(1)/(2) throughput = {ratio:.2f}x with {n_clients} clients")
    results = {
        "environment": environment(),
        "batch_examples": BATCH_EXAMPLES,
        "concurrent": asdict(concurrent),
        "single": asdict(single),
    }
    path = out_dir / "ingest.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {path}")
    return results


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit, so the children are stopped as on Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description="Batch ingestion benchmark.")
    parser.add_argument("--quick", action="store_true", help="few clients and batches, for CI")
    parser.add_argument(
        "--clients",
        type=int,
        help=f"concurrent clients (default {DEFAULT_CLIENTS}; {QUICK_CLIENTS} with --quick)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        help=f"measured batches per client (default {DEFAULT_BATCHES}; {QUICK_BATCHES} with --quick)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"warm-up batches per client (default {DEFAULT_WARMUP}; {QUICK_WARMUP} with --quick)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the figures and the API log")
    args = parser.parse_args(argv)
    clients = args.clients if args.clients is not None else (QUICK_CLIENTS if args.quick else DEFAULT_CLIENTS)
    n_batches = (
        args.batches if args.batches is not None else (QUICK_BATCHES if args.quick else DEFAULT_BATCHES)
    )
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else DEFAULT_WARMUP)
    if clients < 1 or n_batches < 1 or warmup < 0:
        parser.error("--clients and --batches must be at least 1, --warmup at least 0")
    with sigterm_exits():
        results = bench(clients, n_batches, warmup, args.out)
    sys.stdout.flush()
    phases = (results["concurrent"], results["single"])
    return 0 if all(p["errors"] == 0 and not p["check"] for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
