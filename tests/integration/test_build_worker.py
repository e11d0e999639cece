"""A build runs in a real Celery worker against a real Redis, and stores its artifacts."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import msgspec

from service.core.conversation import ChatExample
from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import TERMINAL, State
from tests.conftest import mtbench_conversations, sharegpt_conversations


def _dataset(state: State, blobs: LocalBlobStore, tenant: str, examples: list[dict[str, Any]]) -> str:
    ds = state.create_dataset(tenant, "support chats", "chat", None)
    key = f"{tenant}/{ds['id']}/batches/b1.jsonl"
    data = b"".join(msgspec.json.encode(msgspec.convert(e, ChatExample)) + b"\n" for e in examples)
    blobs.put(key, data)
    state.add_batch(tenant, ds["id"], {"id": "b1", "examples": len(examples), "bytes": len(data), "key": key})
    return str(ds["id"])


def _wait(state: State, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = state.jobs.get(job_id)
        assert job is not None
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {state.jobs.get(job_id)}")


def test_a_build_succeeds_in_a_real_worker(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    examples = mtbench_conversations() + sharegpt_conversations()[:200]
    dataset_id = _dataset(state, blobs, "acme", examples)
    job = state.jobs.create(
        "acme", decode_spec("build", {"dataset_id": dataset_id, "recipe": {"model": "gpt-4o-mini"}})
    )
    enqueue(settings, BUILD_TASK, [job["id"]])

    done = _wait(state, job["id"])
    assert done["status"] == "succeeded", done
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert done["finished_at"] >= done["started_at"]
    artifacts = {a["name"]: a for a in done["result"]["artifacts"]}
    assert set(artifacts) == {"report.json", "report.html", "train.jsonl"}
    report = json.loads(blobs.get(artifacts["report.json"]["key"]))
    assert report["examples"] == len(examples)
    train = blobs.get(artifacts["train.jsonl"]["key"]).splitlines()
    assert len(train) == report["examples_out"] == done["result"]["examples_out"]
    assert artifacts["train.jsonl"]["size"] == len(blobs.get(artifacts["train.jsonl"]["key"]))

    events = state.jobs.events(done["id"])
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "status"
    assert "progress" in kinds
    statuses = [json.loads(data)["status"] for _, kind, data in events if kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]  # one terminal state, once


def test_a_build_that_breaks_the_policies_fails_with_its_report(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(state, blobs, "acme", mtbench_conversations()[:5])  # fewer than the minimum of 10
    job = state.jobs.create("acme", decode_spec("build", {"dataset_id": dataset_id, "recipe": {}}))
    enqueue(settings, BUILD_TASK, [job["id"]])
    done = _wait(state, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "validation_failed"
    assert "too_few_examples" in done["error"]["message"]
    assert [a["name"] for a in done["result"]["artifacts"]] == ["report.json", "report.html"]


def test_a_cancelled_queued_build_never_runs(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(state, blobs, "acme", mtbench_conversations())
    job = state.jobs.create("acme", decode_spec("build", {"dataset_id": dataset_id, "recipe": {}}))
    state.jobs.request_cancel(job["id"])
    enqueue(settings, BUILD_TASK, [job["id"]])
    assert _wait(state, job["id"])["status"] == "cancelled"
