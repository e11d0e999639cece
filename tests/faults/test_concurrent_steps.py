"""A step that runs twice at once (sent again while its first run was alive but had missed its
renewals: a frozen worker, one cut off from Redis) takes effect once: one upload at the provider."""

from __future__ import annotations

import time

import pytest

from service.providers.fake import FakeProvider
from service.settings import Settings
from tests.conftest import sharegpt_conversations
from tests.faults.conftest import Api, Workers, drained
from workers.app import make_app


@pytest.mark.slow
def test_an_upload_run_twice_at_once_uploads_one_file(
    prod_settings: Settings, workers: Workers, api: Api, fake: FakeProvider
) -> None:
    api.post("/v1/providers", {"name": "fake", "base_url": fake.base_url, "api_key": "sk-fake-0123456789"})
    dataset = api.dataset(sharegpt_conversations()[:60])
    workers.start("a", wait=False)
    workers.start("b")
    workers.wait_ready("a")
    fake.add_fault("POST /v1/files", delay_s=4)  # the first run's upload is slow to be stored
    started = api.build(dataset, {"model": "gpt-4o-mini", "upload": {"provider": "fake"}})
    upload = started["upload_job_id"]
    deadline = time.monotonic() + 60
    while api.job(upload)["status"] == "queued":
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    make_app(prod_settings).send_task("tuneset.upload", args=[upload], queue=prod_settings.io_queue)
    done = api.wait(upload, 90)
    assert done["status"] == "succeeded", done
    drained(prod_settings)  # both runs have ended
    state = fake.state()
    posts = [r for r in state["requests"] if (r["method"], r["path"]) == ("POST", "/v1/files")]
    ours = [f for f in state["files"] if f["filename"].startswith(f"tuneset-{started['job_id']}-")]
    assert len(ours) == 1, ours
    assert len(posts) == 1  # the second run waited for the first instead of sending the file too
    assert [r["status"] for r in posts] == [200]
    assert api.statuses(upload) == ["queued", "running", "succeeded"]


@pytest.mark.slow
def test_a_fine_tune_step_run_twice_at_once_creates_one_provider_job(
    prod_settings: Settings, workers: Workers, api: Api, fake: FakeProvider
) -> None:
    api.post("/v1/providers", {"name": "fake", "base_url": fake.base_url, "api_key": "sk-fake-0123456789"})
    dataset = api.dataset(sharegpt_conversations()[:60])
    workers.start("a", wait=False)
    workers.start("b")
    workers.wait_ready("a")
    fake.add_fault("POST /v1/fine_tuning/jobs", delay_s=4)  # the first run's job is slow to be created
    started = api.build(dataset, {"model": "gpt-4o-mini", "upload": {"provider": "fake"}, "fine_tune": {}})
    fine_tune = started["fine_tune_job_id"]
    deadline = time.monotonic() + 60
    while api.job(fine_tune)["status"] == "queued":
        assert time.monotonic() < deadline, "the fine-tune never started"
        time.sleep(0.05)
    make_app(prod_settings).send_task("tuneset.fine_tune", args=[fine_tune], queue=prod_settings.io_queue)
    done = api.wait(fine_tune, 120)
    assert done["status"] == "succeeded", done
    drained(prod_settings)
    state = fake.state()
    posts = [r for r in state["requests"] if (r["method"], r["path"]) == ("POST", "/v1/fine_tuning/jobs")]
    ours = [j for j in state["jobs"] if j["metadata"].get("tuneset_job") == fine_tune]
    assert len(ours) == 1, ours
    assert len(posts) == 1  # the second run waited for the first instead of creating one too
    assert api.statuses(fine_tune) == ["queued", "running", "succeeded"]
