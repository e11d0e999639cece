"""A broker message lost before any worker held it (kombu pops a message and records it as
unacknowledged in two commands; a Redis crash between them, or an AOF that lost its last second,
loses it with no lease): the orphan sweep finds the job with nothing in flight and sends its first
step again. The job ends once, succeeded, with artifacts byte-identical to an undisturbed build's
(SHA-256 over HTTP) — whether it was lost while queued or between the steps of a running build.

Production timeouts (1 h task limit, 2 h visibility timeout), so neither the broker nor the leases
can be what brings the job back; the sweep runs every second and looks at jobs unseen for 2 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.settings import Settings
from service.store.state import State
from tests.faults.conftest import Api, Figure, Workers
from tests.integration.test_worker_faults import distinct_sharegpt

RECIPE = {"model": "gpt-4o-mini", "shard_size": 100, "split": {"validation_fraction": 0.1, "seed": 5}}


@pytest.fixture
def prod_settings(prod_settings: Settings) -> Settings:
    return prod_settings.model_copy(update={"orphan_sweep_interval_s": 1.0, "orphan_after_s": 2.0})


def _files(api: Api, job_id: str) -> dict[str, Any]:
    """The build's artifact digests (checked against the listing), the report's body in place of
    its digest less the header that names the build itself (its job id and date)."""
    files: dict[str, Any] = api.digests(job_id)
    for name in ("report.json", "report.html"):
        files.pop(name)
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts/report.json", headers=api.headers)
    report = r.json()
    assert report.pop("build")["job_id"] == job_id
    files["report.json"] = report
    return files


def _waiting(r: Any, settings: Settings) -> int:
    """The messages waiting in the build queue."""
    return int(r.llen(settings.cpu_queue))


def _resent(workers: Workers) -> int:
    return sum(log.read_text().count("had no step in flight") for log in workers.logs.values())


@pytest.mark.slow
def test_a_queued_job_whose_message_was_lost_runs_once(
    prod_settings: Settings, workers: Workers, api: Api, figure: Figure
) -> None:
    r = State.from_url(prod_settings.redis_url).r
    dataset = api.dataset(distinct_sharegpt(1)[:200])
    lost = api.build(dataset, RECIPE)["job_id"]  # no worker yet: its message waits ...
    assert r.delete(prod_settings.cpu_queue) == 1  # ... and is lost
    workers.start("w")
    began = time.monotonic()
    assert api.wait(lost, 60)["status"] == "succeeded"
    figure(
        f"a queued build whose message was lost succeeded {time.monotonic() - began:.1f} s after a worker came"
    )
    assert api.statuses(lost) == ["queued", "running", "succeeded"]
    assert _resent(workers) == 1

    calm = api.build(dataset, RECIPE)["job_id"]
    assert api.wait(calm, 60)["status"] == "succeeded"
    assert _files(api, lost) == _files(api, calm)
    assert _resent(workers) == 1  # a job whose message waits, or that runs, is never sent again


@pytest.mark.slow
def test_a_running_build_that_lost_its_shard_messages_ends_once_identical(
    prod_settings: Settings, workers: Workers, api: Api, figure: Figure
) -> None:
    r = State.from_url(prod_settings.redis_url).r
    dataset = api.dataset(distinct_sharegpt(4))  # 2,000 conversations: 20 shards and a finalize
    workers.start("w")
    calm = api.build(dataset, RECIPE)["job_id"]
    assert api.wait(calm, 120)["status"] == "succeeded"
    expected = _files(api, calm)

    job_id = api.build(dataset, RECIPE)["job_id"]
    deadline = time.monotonic() + 60
    while not (api.job(job_id)["status"] == "running" and _waiting(r, prod_settings) >= 3):
        assert time.monotonic() < deadline, api.job(job_id)
        time.sleep(0.01)
    waiting = _waiting(r, prod_settings)
    assert r.delete(prod_settings.cpu_queue) == 1  # the shards not yet taken are lost
    lost_at = time.monotonic()
    job = api.wait(job_id, 120)
    figure(
        f"a running build lost {waiting} shard messages; it succeeded {time.monotonic() - lost_at:.1f} s later"
    )
    assert job["status"] == "succeeded", job
    assert api.statuses(job_id) == ["queued", "running", "succeeded"]
    assert _files(api, job_id) == expected
    assert _resent(workers) == 1
