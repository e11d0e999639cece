"""30 concurrent requests with one `Idempotency-Key`, split over two real `tuneset api` processes on
one Redis (two replicas behind a load balancer): exactly one effect. Each answer is the first
response (or its replay, `Idempotent-Replayed: true`) or 409 `request-in-flight` with Retry-After,
as documented; a retry once the first has finished replays it."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from service.store.state import State
from tests.faults.fault_helpers import auth, jsonl_of
from tests.integration.test_sse_streams import api_process
from tests.integration.test_worker_faults import distinct_sharegpt

REQUESTS = 30
EXAMPLES = 2000  # a batch big enough to be in flight while the others arrive


def race(bases: list[str], method: str, path: str, **kwargs: Any) -> list[httpx.Response]:
    """REQUESTS requests released at once (a barrier), alternating between the API processes."""
    barrier = threading.Barrier(REQUESTS)

    def send(i: int) -> httpx.Response:
        with httpx.Client(base_url=bases[i % len(bases)], timeout=60) as http:
            request = http.build_request(method, path, **kwargs)
            barrier.wait()
            return http.send(request)

    with ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(send, range(REQUESTS)))


def check_answers(answers: list[httpx.Response], created: int, id_field: str) -> tuple[str, str]:
    """The one effect's id, and the figure; every answer is the first response or a 409 problem."""
    statuses = Counter(r.status_code for r in answers)
    replayed = sum(r.headers.get("idempotent-replayed") == "true" for r in answers)
    figure = f"{dict(statuses)}, {replayed} replayed"
    assert set(statuses) <= {created, 409}, figure
    successes = [r for r in answers if r.status_code == created]
    assert successes, figure
    first = successes[0].json()
    assert all(r.json() == first for r in successes), figure  # one response, replayed
    assert replayed == len(successes) - 1, figure  # all but the first are replays
    for r in answers:
        if r.status_code == 409:
            assert r.headers["content-type"].startswith("application/problem+json"), r.text
            assert r.json()["type"] == "urn:tuneset:problem:request-in-flight", r.text
            assert r.headers["retry-after"] == "1"
    return str(first[id_field]), figure


def test_30_concurrent_requests_with_one_key_take_effect_once(redis_url: str, tmp_path: Path) -> None:
    state = State.from_url(redis_url)
    state.r.flushdb()
    key = state.create_key("acme")
    with (
        api_process(redis_url, tmp_path) as one,
        api_process(redis_url, tmp_path) as two,
        httpx.Client(base_url=one.base, timeout=60) as http,
    ):
        bases = [one.base, two.base]
        r = http.post("/v1/datasets", json={"name": "race", "kind": "chat"}, headers=auth(key))
        dataset_id = r.json()["id"]
        body = jsonl_of(distinct_sharegpt(EXAMPLES // 500))
        push: dict[str, Any] = {
            "content": body,
            "headers": {**auth(key), "Content-Type": "application/jsonl", "Idempotency-Key": "push-1"},
        }
        batch_answers = race(bases, "POST", f"/v1/datasets/{dataset_id}/batches", **push)
        batch_id, batch_figure = check_answers(batch_answers, 201, "id")
        dataset = http.get(f"/v1/datasets/{dataset_id}", headers=auth(key)).json()
        batches = http.get(f"/v1/datasets/{dataset_id}/batches", headers=auth(key)).json()["items"]
        again = http.post(f"/v1/datasets/{dataset_id}/batches", **push)

        build: dict[str, Any] = {
            "json": {"model": "gpt-4o-mini", "policies": {"consecutive_same_role": "fix"}},
            "headers": {**auth(key), "Idempotency-Key": "build-1"},
        }
        build_answers = race(bases, "POST", f"/v1/datasets/{dataset_id}/builds", **build)
        job_id, build_figure = check_answers(build_answers, 202, "job_id")
        jobs = http.get("/v1/jobs", headers=auth(key)).json()["items"]
        queued_tasks = state.r.llen("tuneset.cpu")  # no worker runs: every task sent is still there
        build_again = http.post(f"/v1/datasets/{dataset_id}/builds", **build)

    print(f"\nbatch push x{REQUESTS}: {batch_figure}; batches stored: {len(batches)}")
    print(f"build x{REQUESTS}: {build_figure}; jobs created: {len(jobs)}, tasks enqueued: {queued_tasks}")
    assert [b["id"] for b in batches] == [batch_id], batch_figure
    assert dataset["batches"] == 1, batch_figure
    assert dataset["examples"] == EXAMPLES, batch_figure
    assert again.status_code == 201
    assert again.json()["id"] == batch_id
    assert again.headers["idempotent-replayed"] == "true"

    assert [j["id"] for j in jobs] == [job_id], build_figure
    assert queued_tasks == 1, build_figure
    assert build_again.status_code == 202
    assert build_again.json()["job_id"] == job_id
    assert build_again.headers["location"] == f"/v1/jobs/{job_id}"
    assert build_again.headers["idempotent-replayed"] == "true"
