"""The metrics an operator watches move with real work: a build through the API into a real
worker (two pool processes, summed by the worker's own metrics port, as in its pod), a webhook
delivery that fails, and provider calls to the local fake provider. Scraped over HTTP."""

from __future__ import annotations

import json
import time

import pytest
from litestar.testing import TestClient
from prometheus_client import generate_latest

from service.api.app import create_app
from service.metrics import REGISTRY
from service.providers.client import ProviderProfile, make_client
from service.providers.fake import run_fake_provider
from service.run import free_port
from service.settings import Settings
from service.ssrf import Allowlist
from service.store.state import TERMINAL, State
from tests.conftest import jsonl, mtbench_conversations
from tests.deploy.conftest import StartWorker, samples, scrape, value


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_build_moves_queue_job_and_step_metrics(settings: Settings, start_worker: StartWorker) -> None:
    state = State.from_url(settings.redis_url)
    key = state.create_key("acme")
    with TestClient(create_app(settings)) as client:
        before = samples(client.get("/metrics").text)
        assert value(before, "tuneset_queue_redis_up") == 1
        assert value(before, "tuneset_queue_depth", queue="tuneset.cpu") == 0
        dead = free_port()  # nothing listens there: the delivery fails with a connection error
        hook = client.post(
            "/v1/webhooks/subscriptions", json={"url": f"http://127.0.0.1:{dead}/h"}, headers=_auth(key)
        )
        assert hook.status_code == 201, hook.text
        ds = client.post("/v1/datasets", json={"name": "m", "kind": "chat"}, headers=_auth(key)).json()["id"]
        pushed = client.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*mtbench_conversations()),
            headers={**_auth(key), "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201
        job_id = client.post(
            f"/v1/datasets/{ds}/builds", json={"model": "gpt-4o-mini", "shard_size": 10}, headers=_auth(key)
        ).json()["job_id"]

        queued = samples(client.get("/metrics").text)  # no worker yet: the step waits in its list
        assert value(queued, "tuneset_queue_depth", queue="tuneset.cpu") == 1
        assert value(queued, "tuneset_queue_depth", queue="tuneset.io") == 0
        created = value(queued, "tuneset_job_transitions_total", kind="build", status="queued")
        assert created == value(before, "tuneset_job_transitions_total", kind="build", status="queued") + 1

        worker = start_worker(
            args=("--max-tasks-per-child", "1")
        )  # each step in a new child: several processes
        deadline = time.monotonic() + 90
        while (job := state.jobs.get(job_id)) is None or job["status"] not in TERMINAL:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        after = samples(client.get("/metrics").text)
        assert value(after, "tuneset_queue_depth", queue="tuneset.cpu") == 0

        # the worker's figures, summed over its processes
        deadline = time.monotonic() + 30
        while True:
            found = scrape(worker)
            if value(found, "tuneset_webhook_attempts_total", outcome="connect_error") >= 1:
                break
            assert time.monotonic() < deadline, (found, worker.log.read_text()[-3000:])
            time.sleep(0.5)
    step = "tuneset_step_duration_seconds_count"
    assert value(found, step, step="build", outcome="success") == 1
    assert value(found, step, step="build_shard", outcome="success") == 3  # 30 examples, 10 a shard
    assert value(found, step, step="build_finalize", outcome="success") == 1
    assert value(found, "tuneset_step_duration_seconds_sum", step="build_shard", outcome="success") > 0
    assert value(found, "tuneset_job_transitions_total", kind="build", status="running") == 1
    assert value(found, "tuneset_job_transitions_total", kind="build", status="succeeded") == 1
    assert value(found, "tuneset_steps_running", step="build_shard") == 0
    assert value(found, "tuneset_webhook_attempt_duration_seconds_count", outcome="connect_error") >= 1
    assert value(found, "tuneset_webhook_attempts_total", outcome="delivered") == 0
    # its JSON log lines name the job and tenant of each step, and never the webhook's secret
    lines = [json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")]
    steps = [line for line in lines if line["logger"] == "tuneset.steps" and line.get("job_id") == job_id]
    assert sorted(line["step"] for line in steps) == ["build", "build_finalize", *["build_shard"] * 3]
    assert {line["tenant"] for line in steps} == {"acme"}
    assert hook.json()["secret"][6:] not in worker.log.read_text()
    # the pool ran the steps in more than one process, and the port summed them
    pids = {p.stem.rsplit("_", 1)[-1] for p in (worker.log.parent / "metrics0").glob("*.db")}
    assert len(pids) >= 2, pids


def test_provider_calls_are_timed_and_their_errors_counted() -> None:
    with run_fake_provider(step_seconds=0.1) as fake:
        profile = ProviderProfile(name="fake", base_url=fake.base_url, api_key="sk-test-key")
        client = make_client(profile, allow=Allowlist(frozenset({"127.0.0.1"})), max_retries=0)
        before = samples(_render())
        client.files.list(purpose="fine-tune")
        fake.add_fault("GET /v1/fine_tuning/jobs", status=503, times=1)
        with pytest.raises(Exception, match="503"):
            client.fine_tuning.jobs.list()
    after = samples(_render())
    count = "tuneset_provider_request_duration_seconds_count"
    assert (
        value(after, count, operation="files.list", status="200")
        == value(before, count, operation="files.list", status="200") + 1
    )
    errors = "tuneset_provider_request_errors_total"
    assert (
        value(after, errors, operation="fine_tuning.jobs.list", error="503")
        == value(before, errors, operation="fine_tuning.jobs.list", error="503") + 1
    )
    listed = [
        v for (name, labels), v in after.items() if name == errors and ("operation", "files.list") in labels
    ]
    assert sum(listed) == sum(
        v for (name, labels), v in before.items() if name == errors and ("operation", "files.list") in labels
    )

    # a provider that does not answer: the transport error is counted by its name
    closed = ProviderProfile(
        name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="sk-test-key"
    )
    down = make_client(closed, allow=Allowlist(frozenset({"127.0.0.1"})), max_retries=0)
    with pytest.raises(Exception, match=r"(?i)connection"):
        down.files.list(purpose="fine-tune")
    assert value(samples(_render()), errors, operation="files.list", error="ConnectError") >= 1


def _render() -> str:
    return generate_latest(REGISTRY).decode()


def test_queue_metrics_say_when_redis_does_not_answer(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(broken)) as client:
        assert client.get("/livez").status_code == 200
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    found = samples(scraped.text)
    assert value(found, "tuneset_queue_redis_up") == 0
    assert not [k for k in found if k[0] == "tuneset_queue_depth"]
    assert any(k[0] == "tuneset_http_requests_total" for k in found)  # the rest of the page renders
