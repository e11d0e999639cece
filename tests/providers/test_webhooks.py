"""The fake's webhooks: signed so that the SDK's `client.webhooks.unwrap` verifies them,
retried when the receiver fails, one per terminal state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import openai
import pytest
from openai.types.webhooks import FineTuningJobCancelledWebhookEvent, FineTuningJobFailedWebhookEvent
from standardwebhooks import Webhook

from service.providers.client import FineTuneRequest, create_fine_tune, upload_file, wait_processed
from service.providers.fake import FakeProvider
from tests.providers.conftest import WEBHOOK_SECRET, Receiver, chat_examples, write_jsonl


def start_job(
    client: openai.OpenAI, tmp_path: Path, method: Literal["supervised", "dpo"] = "supervised"
) -> str:
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(10))
    file_id = upload_file(client, path, "t.jsonl")
    wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    request = FineTuneRequest(model="gpt-4o-mini", training_file=file_id, n_epochs=1, method=method)
    return create_fine_tune(client, request).id


def test_a_succeeded_job_is_announced_with_a_verifiable_signature(
    fake: FakeProvider, client: openai.OpenAI, receiver: Receiver, tmp_path: Path
) -> None:
    fake.configure(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET)
    job_id = start_job(client, tmp_path)  # nobody polls it: the fake moves on by itself
    [(body, headers)] = receiver.wait_for(1)
    event = client.webhooks.unwrap(body, headers, secret=WEBHOOK_SECRET)
    assert event.type == "fine_tuning.job.succeeded"
    assert event.data.id == job_id
    assert event.object == "event"
    assert headers["webhook-id"] == event.id
    assert Webhook(WEBHOOK_SECRET).verify(body, headers)["data"] == {"id": job_id}  # the spec's own check
    assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
    tampered = body.replace(job_id.encode(), b"ftjob-someone-else")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(tampered, headers, secret=WEBHOOK_SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret="whsec_" + "A" * 43 + "=")


def test_a_failing_receiver_gets_the_same_event_again(
    fake: FakeProvider, client: openai.OpenAI, receiver: Receiver, tmp_path: Path
) -> None:
    fake.configure(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET)
    receiver.statuses.extend([500, 503])
    start_job(client, tmp_path)
    received = receiver.wait_for(3)
    assert len({headers["webhook-id"] for _, headers in received}) == 1
    for body, headers in received:
        client.webhooks.unwrap(body, headers, secret=WEBHOOK_SECRET)
    deadline = time.monotonic() + 5
    while (delivery := fake.state()["webhooks"][0])["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("delivered", 3, 204)


def test_a_receiver_that_never_answers_ends_as_failed(
    fake: FakeProvider, client: openai.OpenAI, receiver: Receiver, tmp_path: Path
) -> None:
    fake.configure(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, webhook_attempts=2)
    receiver.statuses.extend([500] * 5)
    start_job(client, tmp_path)
    receiver.wait_for(2)
    deadline = time.monotonic() + 5
    while (delivery := fake.state()["webhooks"][0])["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 2, 500)


def test_failed_and_cancelled_jobs_are_announced(
    fake: FakeProvider, client: openai.OpenAI, receiver: Receiver, tmp_path: Path
) -> None:
    fake.configure(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, step_seconds=0.5)
    failing = start_job(client, tmp_path, method="dpo")  # a chat file for DPO fails validation
    running = start_job(client, tmp_path)
    client.fine_tuning.jobs.cancel(running)
    received = receiver.wait_for(2)
    events: dict[str, str] = {}
    for body, headers in received:
        event = client.webhooks.unwrap(body, headers, secret=WEBHOOK_SECRET)
        assert isinstance(event, FineTuningJobFailedWebhookEvent | FineTuningJobCancelledWebhookEvent)
        events[event.data.id] = event.type
    assert events == {failing: "fine_tuning.job.failed", running: "fine_tuning.job.cancelled"}


def test_no_webhooks_without_a_url(fake: FakeProvider, client: openai.OpenAI, tmp_path: Path) -> None:
    job_id = start_job(client, tmp_path)
    deadline = time.monotonic() + 5
    while client.fine_tuning.jobs.retrieve(job_id).status != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert fake.state()["webhooks"] == []
