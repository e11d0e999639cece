"""A step that runs twice at once (sent again while its first run was alive but had missed its
renewals: a frozen worker, one cut off from Redis) takes effect once: one upload at the provider."""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.providers.fake import FakeProvider
from service.settings import Settings
from tests.conftest import sharegpt_conversations
from tests.faults.conftest import Api, Workers, drained
from workers.app import make_app


def run_twice_at_once(
    settings: Settings,
    workers: Workers,
    api: Api,
    fake: FakeProvider,
    slow: str,
    recipe: dict[str, Any],
    step: str,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Start a build whose `step` job ("upload" or "fine_tune") is slow at the provider's `slow`
    route, send that step again while its first run is inside the call, and wait for the job.
    Returns the build's start answer, the provider's requests to `slow`, and its state."""
    api.post("/v1/providers", {"name": "fake", "base_url": fake.base_url, "api_key": "sk-fake-0123456789"})
    dataset = api.dataset(sharegpt_conversations()[:60])
    workers.start("a", wait=False)
    workers.start("b")
    workers.wait_ready("a")
    fake.add_fault(slow, delay_s=4)  # the first run's call is slow to take effect
    started = api.build(dataset, {"model": "gpt-4o-mini", "upload": {"provider": "fake"}, **recipe})
    job = started[f"{step}_job_id"]
    deadline = time.monotonic() + 60
    while api.job(job)["status"] == "queued":
        assert time.monotonic() < deadline, f"the {step} never started"
        time.sleep(0.05)
    make_app(settings).send_task(f"tuneset.{step}", args=[job], queue=settings.io_queue)
    done = api.wait(job, 120)
    assert done["status"] == "succeeded", done
    drained(settings)  # both runs have ended
    state = fake.state()
    method, path = slow.split(" ")
    posts = [r for r in state["requests"] if (r["method"], r["path"]) == (method, path)]
    assert len(posts) == 1  # the second run waited for the first instead of calling too
    assert api.statuses(job) == ["queued", "running", "succeeded"]
    return started, posts, state


@pytest.mark.slow
def test_an_upload_run_twice_at_once_uploads_one_file(
    prod_settings: Settings, workers: Workers, api: Api, fake: FakeProvider
) -> None:
    started, posts, state = run_twice_at_once(
        prod_settings, workers, api, fake, "POST /v1/files", {}, "upload"
    )
    ours = [f for f in state["files"] if f["filename"].startswith(f"tuneset-{started['job_id']}-")]
    assert len(ours) == 1, ours
    assert [r["status"] for r in posts] == [200]


@pytest.mark.slow
def test_a_fine_tune_step_run_twice_at_once_creates_one_provider_job(
    prod_settings: Settings, workers: Workers, api: Api, fake: FakeProvider
) -> None:
    recipe: dict[str, Any] = {"fine_tune": {}}
    started, _, state = run_twice_at_once(
        prod_settings, workers, api, fake, "POST /v1/fine_tuning/jobs", recipe, "fine_tune"
    )
    ours = [j for j in state["jobs"] if j["metadata"].get("tuneset_job") == started["fine_tune_job_id"]]
    assert len(ours) == 1, ours
