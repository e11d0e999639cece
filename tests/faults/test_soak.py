"""Soak: many small build → upload jobs while workers are SIGKILLed whole at random and the
provider fails (500 or a lost answer after it stored the file, 429 with Retry-After, dropped
connections). Every job reaches a terminal state, every one succeeds, and no file is uploaded
twice. Production timeouts: only the leases bring lost steps back in time. The chaos lasts
until every job has ended or a deadline (180 s + 1.5 s per job) passed; then the jobs still
running get SETTLE_S without kills or faults, and must all end in it (the figure says how many
were left when the chaos stopped).

TUNESET_SOAK_JOBS sets the number of builds (12 in CI, 300 for the figure); each has an upload.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Any

import pytest

from service.providers.fake import FakeProvider
from service.settings import Settings
from service.store.state import TERMINAL
from tests.conftest import sharegpt_conversations
from tests.faults.conftest import Api, Figure, Workers, env_int, lease_table

WORKERS = 3
PROVIDER_FAULTS: list[dict[str, Any]] = [
    {"match": "POST /v1/files", "status": 500, "phase": "after"},  # stored, answer lost: the lookup finds it
    {"match": "POST /v1/files", "drop": True, "phase": "after"},  # stored, connection closed
    {"match": "POST /v1/files", "status": 429, "retry_after": 1},
    {"match": "GET /v1/files", "status": 503},  # the lookup itself fails: the step retries later
    {"match": "POST /v1/files", "drop": True},  # never reached the provider
]


class Chaos(threading.Thread):
    """Now and then SIGKILL a random working worker whole (one at least stays) and start another;
    more often, inject a provider fault."""

    def __init__(self, workers: Workers, fake: FakeProvider, rng: random.Random) -> None:
        super().__init__(name="chaos", daemon=True)
        self.workers, self.fake, self.rng = workers, fake, rng
        self.stopping = threading.Event()
        self.kills = self.faults = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            next_kill = time.monotonic() + self.rng.uniform(2, 6)
            while not self.stopping.wait(self.rng.uniform(1.0, 3.0)):
                self.fake.add_fault(**self.rng.choice(PROVIDER_FAULTS))
                self.faults += 1
                working = self.workers.ready()
                if time.monotonic() < next_kill or len(working) < 2:
                    continue
                self.workers.kill(self.rng.choice(working))
                self.kills += 1
                self.workers.start(f"w{self.kills + WORKERS}", wait=False)
                next_kill = time.monotonic() + self.rng.uniform(3, 8)
        except BaseException as e:  # surfaced by the test
            self.errors.append(e)


SETTLE_S = 120  # once the chaos stops, the jobs still running have this long to end


@pytest.mark.slow
def test_soak_every_job_ends_and_nothing_is_uploaded_twice(
    prod_settings: Settings, workers: Workers, api: Api, fake: FakeProvider, figure: Figure
) -> None:
    n = env_int("TUNESET_SOAK_JOBS", 12)
    rng = random.Random(int(time.time()))
    api.post("/v1/providers", {"name": "fake", "base_url": fake.base_url, "api_key": "sk-fake-0123456789"})
    dataset = api.dataset(sharegpt_conversations()[:120])
    for i in range(WORKERS):
        workers.start(f"w{i}", wait=i == WORKERS - 1)
    chaos = Chaos(workers, fake, rng)
    began = time.monotonic()
    chaos.start()
    jobs: list[str] = []
    try:
        i = 0
        # n jobs at least, and more until a worker has been killed with jobs in flight (at CI size
        # the n jobs can all end before the first kill), at most 10 n
        while i < n or (chaos.kills == 0 and i < 10 * n):
            started = api.build(
                dataset,
                {
                    "model": "gpt-4o-mini",
                    "shard_size": rng.choice([30, 60, 120]),
                    "upload": {"provider": "fake"},
                },
            )
            jobs += [started["job_id"], started["upload_job_id"]]
            if i % 10 == 9 or i >= n:
                time.sleep(rng.uniform(0, 1))  # arrivals over time, not one burst
            i += 1
        deadline = time.monotonic() + 180 + 3 * len(jobs) // 2
        pending = set(jobs)
        while pending and time.monotonic() < deadline:
            pending = {j for j in pending if api.job(j)["status"] not in TERMINAL}
            assert not chaos.errors, chaos.errors
            time.sleep(0.5)
    finally:
        chaos.stopping.set()
        chaos.join(60)
    # the kills and faults have stopped: whatever is left must still end, soon
    left_at_calm = len(pending)
    calm = time.monotonic()
    while pending and time.monotonic() < calm + SETTLE_S:
        pending = {j for j in pending if api.job(j)["status"] not in TERMINAL}
        time.sleep(0.5)
    settled_s = time.monotonic() - calm
    took = time.monotonic() - began
    ended = {j: api.job(j) for j in jobs}
    statuses = collections.Counter(job["status"] for job in ended.values())
    provider = fake.state()
    files = collections.Counter(f["filename"] for f in provider["files"])
    table = lease_table(prod_settings)
    resent = sum(table.redeliveries(j) for j in jobs)
    fault_hits = sum(f["hits"] for f in provider["faults"])
    figure(
        f"soak of {len(jobs) // 2} builds + {len(jobs) // 2} uploads in {took:.0f} s, {chaos.kills} workers killed whole "
        f"({resent} lost steps sent again), {fault_hits} provider faults met: {dict(statuses)}; "
        f"{sum(files.values())} files uploaded, "
        f"{sum(c - 1 for c in files.values())} duplicates; {left_at_calm} jobs not ended when the chaos "
        f"stopped, all but {len(pending)} ended {settled_s:.0f} s later"
    )
    for j in sorted(pending):  # what a stuck job looked like
        job = ended[j]
        print(
            f"stuck {j}: {job['status']} stage={job.get('stage')} done={job.get('done')}/{job.get('total')} "
            f"redeliveries={table.redeliveries(j)} leases={[h.step.task for h in table.held() if h.step.job_id == j]}"
        )
    assert statuses["succeeded"] == len(jobs), {j: (v["status"], v.get("error")) for j, v in ended.items()}
    assert [name for name, count in files.items() if count > 1] == []  # no file uploaded twice
    uploaded = {f"tuneset-{ended[j]['result']['build_job_id']}-train.jsonl" for j in jobs[1::2]}
    assert set(files) == uploaded
    assert chaos.kills > 0
