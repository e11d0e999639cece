"""What the Redis and idempotency fault tests share: a redis-server of their own that they can
freeze, kill and restart (with AOF, as `tuneset dev` and deploy/compose.yaml run it), and the
HTTP steps a client takes to get a dataset with examples and builds of it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.run import free_port, start_redis, stop
from service.settings import Settings
from service.store.state import TERMINAL, State
from tests.integration.test_worker_faults import _start_worker, distinct_sharegpt


@dataclass
class OwnRedis:
    """A redis-server only this test uses (the session's one stays untouched by its faults)."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL: no shutdown, no last AOF flush; what the AOF file already holds is all there is."""
        self.proc.kill()
        self.proc.wait()

    def start(self) -> None:
        self.proc = start_redis(self.dir, self.port)


@contextlib.contextmanager
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    port = free_port()
    redis_dir = tmp_path / "redis"
    server = OwnRedis(redis_dir, port, start_redis(redis_dir, port))
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, signal.SIGCONT)  # a frozen server cannot stop
        stop(server.proc)


def worker_settings(redis_url: str, tmp_path: Path, **update: Any) -> Settings:
    """The settings of a worker sharing the API's data directory (`api_process` uses tmp_path/data)."""
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", **update)


@contextlib.contextmanager
def workers(settings: Settings, count: int = 1) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` real Celery worker processes; their logs are printed when the test fails."""
    logs = [settings.data_dir / f"worker{i}.log" for i in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs:
            procs.append(_start_worker(settings, log))
        yield procs
    except BaseException:
        for log in logs:
            if log.exists():
                print(f"--- {log.name}\n{log.read_text()[-4000:]}")
        raise
    finally:
        for proc in procs:
            stop(proc)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def jsonl_of(examples: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in examples)


def dataset_with_examples(client: httpx.Client, key: str, copies: int) -> str:
    """A chat dataset holding the ShareGPT sample `copies` times over (500 distinct conversations
    a copy), pushed over HTTP."""
    r = client.post("/v1/datasets", json={"name": "faults", "kind": "chat"}, headers=auth(key))
    assert r.status_code == 201, r.text
    dataset_id: str = r.json()["id"]
    examples = distinct_sharegpt(copies)
    for start in range(0, len(examples), 10_000):
        r = client.post(
            f"/v1/datasets/{dataset_id}/batches",
            content=jsonl_of(examples[start : start + 10_000]),
            headers={**auth(key), "Content-Type": "application/jsonl"},
        )
        assert r.status_code == 201, r.text
    return dataset_id


def wait_terminal(state: State, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each job's record once all of them are terminal (fails after `timeout` naming the others)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j: state.jobs.get(j) for j in job_ids}
        left = {
            j: (job or {}).get("status")
            for j, job in jobs.items()
            if (job or {}).get("status") not in TERMINAL
        }
        if not left:
            return {j: job for j, job in jobs.items() if job is not None}
        assert time.monotonic() < deadline, (
            f"{len(left)} jobs not terminal after {timeout} s: {Counter(left.values())}, e.g. {list(left)[:3]}"
        )
        time.sleep(0.2)


def status_events(state: State, job_id: str) -> list[str]:
    return [json.loads(d)["status"] for _, kind, d in state.jobs.events(job_id) if kind == "status"]


def endings(state: State, job_id: str) -> list[str]:
    """The terminal statuses the job's event stream announced: exactly one for a job that ended once."""
    return [s for s in status_events(state, job_id) if s in TERMINAL]


def latency_line(label: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{label}: no requests"
    return (
        f"{label}: {len(seconds)} requests, p50 {statistics.median(seconds) * 1000:.0f} ms, "
        f"max {max(seconds) * 1000:.0f} ms"
    )
