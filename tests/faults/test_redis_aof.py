"""Redis SIGKILLed while clients submit builds and push batches, then restarted on its AOF (as
`tuneset dev` and deploy/compose.yaml run it: appendonly yes, appendfsync everysec): 0 confirmed
jobs lost. Every build the API answered 202 for and every batch it answered 201 for is still
there after the restart, and every such build ends, once, succeeded — with a real worker that
was consuming when Redis died. TUNESET_FAULT_AOF_JOBS sets the builds confirmed before the kill
(default 60)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.store.state import State
from tests.faults.fault_helpers import (
    auth,
    endings,
    jsonl_of,
    own_redis,
    wait_terminal,
    worker_settings,
    workers,
)
from tests.integration.test_sse_streams import api_process
from tests.integration.test_worker_faults import distinct_sharegpt

CONFIRMED_BEFORE_KILL = int(os.environ.get("TUNESET_FAULT_AOF_JOBS", "60"))
DOWN_S = 1.0  # Redis stays down this long before it restarts


class Submitter:
    """A client thread that POSTs again and again and keeps what the API confirmed."""

    def __init__(self, base: str, path: str, created: int, id_field: str, **kwargs: object) -> None:
        self.confirmed: list[tuple[float, str]] = []  # (monotonic time of the answer, id)
        self.statuses: Counter[int | str] = Counter()
        self.unexpected: list[str] = []  # anything but the confirmation or a 503 problem
        self.stop = threading.Event()
        self._args = (base, path, created, id_field, kwargs)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        base, path, created, id_field, kwargs = self._args
        with httpx.Client(base_url=base, timeout=30) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(path, **kwargs)  # type: ignore[arg-type]
                except httpx.HTTPError as e:
                    self.statuses[type(e).__name__] += 1
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code == created:
                    self.confirmed.append((time.monotonic(), str(r.json()[id_field])))
                else:
                    if r.status_code != 503 or r.headers.get("content-type") != "application/problem+json":
                        self.unexpected.append(f"{r.status_code}: {r.text[:300]}")
                    time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.mark.slow
def test_a_redis_crash_loses_no_confirmed_job(tmp_path: Path) -> None:
    with own_redis(tmp_path) as redis:
        state = State.from_url(redis.url)
        key = state.create_key("acme")
        # short broker timeouts: a task in flight when Redis died is handed out again soon
        settings = worker_settings(redis.url, tmp_path, build_time_limit_s=15, visibility_timeout_s=20)
        with (
            api_process(redis.url, tmp_path) as api,
            workers(settings),
            httpx.Client(base_url=api.base, timeout=30) as http,
        ):
            r = http.post("/v1/datasets", json={"name": "aof", "kind": "chat"}, headers=auth(key))
            dataset_id = r.json()["id"]
            r = http.post("/v1/datasets", json={"name": "pushed", "kind": "chat"}, headers=auth(key))
            pushed_id = r.json()["id"]  # the batches pushed meanwhile go here: the builds keep one shard
            r = http.post(
                f"/v1/datasets/{dataset_id}/batches",
                content=jsonl_of(distinct_sharegpt(1)[:100]),
                headers={**auth(key), "Content-Type": "application/jsonl"},
            )
            assert r.status_code == 201, r.text
            builds = [
                Submitter(
                    api.base, f"/v1/datasets/{dataset_id}/builds", 202, "job_id", json={}, headers=auth(key)
                )
                for _ in range(2)
            ]
            pushes = Submitter(
                api.base,
                f"/v1/datasets/{pushed_id}/batches",
                201,
                "id",
                content=jsonl_of(
                    [
                        {
                            "messages": [
                                {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"},
                            ]
                        }
                    ]
                ),
                headers={**auth(key), "Content-Type": "application/jsonl"},
            )
            submitters = [*builds, pushes]
            deadline = time.monotonic() + 120
            while sum(len(s.confirmed) for s in builds) < CONFIRMED_BEFORE_KILL:
                assert time.monotonic() < deadline, [s.statuses for s in submitters]
                time.sleep(0.01)
            redis.crash()
            killed_at = time.monotonic()
            time.sleep(DOWN_S)
            redis.start()
            restarted_at = time.monotonic()
            while not any(t > restarted_at for s in builds for t, _ in s.confirmed):  # answering again
                assert time.monotonic() < restarted_at + 30, [s.statuses for s in submitters]
                time.sleep(0.01)
            for s in submitters:
                s.finish()

            confirmed_jobs = [j for s in builds for _, j in s.confirmed]
            before_kill = sum(t < killed_at for s in builds for t, _ in s.confirmed)
            statuses = sum((s.statuses for s in builds), Counter[int | str]())
            present = [j for j in confirmed_jobs if state.jobs.get(j) is not None]
            start = time.monotonic()
            done = wait_terminal(state, present, timeout=240)
            ended_after = time.monotonic() - start
            ended = {j: endings(state, j) for j in present}
            stored_batches = {
                b["id"]
                for b in http.get(f"/v1/datasets/{pushed_id}/batches", headers=auth(key)).json()["items"]
            }

    confirmed_batches = [b for _, b in pushes.confirmed]
    lost_jobs = sorted(set(confirmed_jobs) - set(present))
    lost_batches = sorted(set(confirmed_batches) - stored_batches)
    outcomes = Counter(job["status"] for job in done.values())
    print(
        f"\nRedis SIGKILLed after {before_kill} confirmed builds, restarted on its AOF {DOWN_S:.0f} s later; "
        f"build answers {dict(statuses)}; confirmed builds {len(confirmed_jobs)}, lost {len(lost_jobs)}; "
        f"confirmed batches {len(confirmed_batches)}, lost {len(lost_batches)}; "
        f"builds {dict(outcomes)}, all terminal {ended_after:.1f} s after the restart"
    )
    figure = f"lost builds {lost_jobs[:5]}, lost batches {lost_batches[:5]}"
    assert before_kill >= CONFIRMED_BEFORE_KILL
    assert not [u for s in submitters for u in s.unexpected], [u for s in submitters for u in s.unexpected][
        :5
    ]
    assert not lost_jobs, figure
    assert not lost_batches, figure
    assert outcomes == {"succeeded": len(confirmed_jobs)}, {
        j: d.get("error") for j, d in done.items() if d["status"] != "succeeded"
    }
    assert all(e == ["succeeded"] for e in ended.values()), [e for e in ended.values() if e != ["succeeded"]]
