"""Redis frozen (SIGSTOP) for 20 s while builds run, against a real `tuneset api` and a real worker.

Every request the API gets during the freeze that needs Redis answers 503 (a problem with
Retry-After) within its timeout: never a 500, never a hang. After SIGCONT the builds that were
in flight end exactly once, and succeed. TUNESET_FAULT_REDIS_STOP_S sets the freeze (default 20).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from service.store.state import State
from tests.faults.fault_helpers import (
    auth,
    dataset_with_examples,
    endings,
    jsonl_of,
    latency_line,
    own_redis,
    wait_terminal,
    worker_settings,
    workers,
)
from tests.integration.test_sse_streams import api_process

STOP_S = float(os.environ.get("TUNESET_FAULT_REDIS_STOP_S", "20"))
# The longest an API request may take while Redis does not answer: the state store's socket
# timeout (5 s) and a margin for a busy machine.
ANSWER_WITHIN_S = 8.0
CLIENT_TIMEOUT_S = 60.0  # well past ANSWER_WITHIN_S: a hang is measured, not cut short
PER_OPERATION = 2  # clients sending each kind of request at once


class Answer(NamedTuple):
    operation: str
    status: int | None  # None: no answer within CLIENT_TIMEOUT_S, or the connection failed
    seconds: float
    content_type: str
    body: str


def operations(key: str, dataset_id: str, job_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(label, method, path, request kwargs): one of each kind of request a client sends."""
    h = auth(key)
    return [
        ("GET job", "GET", f"/v1/jobs/{job_id}", {"headers": h}),
        ("GET jobs", "GET", "/v1/jobs", {"headers": h}),
        ("GET dataset", "GET", f"/v1/datasets/{dataset_id}", {"headers": h}),
        ("GET datasets", "GET", "/v1/datasets", {"headers": h}),
        ("POST build", "POST", f"/v1/datasets/{dataset_id}/builds", {"headers": h, "json": {}}),
        (
            "POST batch",
            "POST",
            f"/v1/datasets/{dataset_id}/batches",
            {
                "headers": {**h, "Content-Type": "application/jsonl", "Idempotency-Key": "frozen"},
                "content": jsonl_of([{"messages": [{"role": "user", "content": "hi"}]}]),
            },
        ),
        ("POST cancel", "POST", "/v1/jobs/job_000000000000000000000000000/cancel", {"headers": h}),
        ("GET events", "GET", f"/v1/jobs/{job_id}/events", {"headers": h}),
        ("GET artifacts", "GET", f"/v1/jobs/{job_id}/artifacts", {"headers": h}),
        ("GET readyz", "GET", "/readyz", {}),
    ]


def hammer(base: str, ops: list[tuple[str, str, str, dict[str, Any]]], until: float) -> list[Answer]:
    """PER_OPERATION clients per operation, each sending it again and again until `until`
    (monotonic), one request at a time; every answer."""
    answers: list[Answer] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT_S) as http:
            label, method, path, kwargs = ops[offset % len(ops)]
            while time.monotonic() < until:
                start = time.perf_counter()
                try:
                    r = http.request(method, path, **kwargs)
                    answer = Answer(
                        label,
                        r.status_code,
                        time.perf_counter() - start,
                        r.headers.get("content-type", ""),
                        r.text[:300],
                    )
                except httpx.HTTPError as e:
                    answer = Answer(label, None, time.perf_counter() - start, "", repr(e))
                with lock:
                    answers.append(answer)

    clients = PER_OPERATION * len(ops)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return answers


@pytest.mark.slow
def test_a_frozen_redis_gets_503s_in_time_and_builds_end_once(tmp_path: Path) -> None:
    with own_redis(tmp_path) as redis:
        state = State.from_url(redis.url)
        key = state.create_key("acme")
        settings = worker_settings(redis.url, tmp_path, build_time_limit_s=120, visibility_timeout_s=180)
        with (
            api_process(redis.url, tmp_path) as api,
            workers(settings),
            httpx.Client(base_url=api.base, timeout=30) as http,
        ):
            dataset_id = dataset_with_examples(http, key, copies=20)  # 10,000 conversations
            jobs = []
            for _ in range(3):
                r = http.post(
                    f"/v1/datasets/{dataset_id}/builds", json={"shard_size": 1000}, headers=auth(key)
                )
                assert r.status_code == 202, r.text
                jobs.append(r.json()["job_id"])
            deadline = time.monotonic() + 60
            while (state.jobs.get(jobs[0]) or {}).get("done", 0) == 0:
                assert time.monotonic() < deadline, "the first build never started"
                time.sleep(0.05)

            redis.freeze()
            frozen_at = time.monotonic()
            try:
                # requests stop starting early enough that every answer comes during the freeze
                answers = hammer(
                    api.base, operations(key, dataset_id, jobs[0]), frozen_at + STOP_S - ANSWER_WITHIN_S
                )
                time.sleep(max(0.0, frozen_at + STOP_S - time.monotonic()))
            finally:
                redis.thaw()
            thawed_after = time.monotonic() - frozen_at

            done = wait_terminal(state, jobs, timeout=240)
            recovered_after = time.monotonic() - frozen_at - thawed_after
            ended = {j: endings(state, j) for j in jobs}
            api_log = api.log.read_text()

    statuses = Counter(a.status for a in answers)
    slowest = max(answers, key=lambda a: a.seconds)
    print(
        f"\nRedis frozen {thawed_after:.1f} s; {len(answers)} API requests during the freeze: {dict(statuses)}"
    )
    for label in sorted({a.operation for a in answers}):
        print("  " + latency_line(label, [a.seconds for a in answers if a.operation == label]))
    print(f"  slowest: {slowest.operation} {slowest.seconds:.2f} s")
    print(
        f"builds in flight: {[d['status'] for d in done.values()]}, all terminal {recovered_after:.1f} s "
        f"after SIGCONT; endings per job: {[len(e) for e in ended.values()]}"
    )

    figure = f"{dict(statuses)}, slowest {slowest.operation} {slowest.seconds:.2f} s"
    answered = Counter(a.operation for a in answers)
    assert min(answered.values()) >= PER_OPERATION, answered  # every kind of request met the freeze
    assert len(answered) == len(operations(key, dataset_id, jobs[0])), answered
    wrong = [
        a for a in answers if a.status != 503 or not a.content_type.startswith("application/problem+json")
    ]
    assert not wrong, f"{figure}; not a 503 problem: {wrong[:5]}"
    late = [a for a in answers if a.seconds > ANSWER_WITHIN_S]
    assert not late, f"{figure}; answered after {ANSWER_WITHIN_S} s: {late[:5]}"
    assert "Traceback" not in api_log, api_log[-3000:]
    for job_id, job in done.items():
        assert job["status"] == "succeeded", (job_id, job.get("error"))
        assert ended[job_id] == ["succeeded"], (job_id, ended[job_id])
        assert job["result"]["examples"] == 10_000
