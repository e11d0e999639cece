"""Workers die: a build whose worker is SIGKILLed mid-task is finished by another worker, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.run import stop, worker_command
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import State
from tests.conftest import sharegpt_conversations
from tests.integration.conftest import ROOT, settings_env
from tests.integration.test_build_worker import _dataset, _wait
from workers.sharded import artifact_digests


def distinct_sharegpt(copies: int) -> list[dict[str, Any]]:
    """The ShareGPT sample `copies` times over, each copy's texts marked so no two are equal."""
    return [
        {"messages": [{**m, "content": f"{m['content']} ({i})"} for m in c["messages"]]}
        for i in range(copies)
        for c in sharegpt_conversations()
    ]


def _start_worker(
    settings: Settings, log: Path, env: dict[str, str] | None = None, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """A real worker process (its own process group), ready to consume; `env` defaults to the
    settings', `command` to `worker_command(settings)`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command or worker_command(settings),
            env=env or settings_env(settings),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the test can kill the pool child too
        )
    deadline = time.monotonic() + 30
    while b"ready." not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


@pytest.fixture
def quick_redelivery(settings: Settings) -> Settings:
    """A short visibility timeout, so a task whose worker vanished is handed out again soon."""
    return settings.model_copy(update={"build_time_limit_s": 20, "visibility_timeout_s": 25})


def test_a_killed_worker_leaves_a_build_another_worker_finishes(quick_redelivery: Settings) -> None:
    settings = quick_redelivery
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    examples = distinct_sharegpt(60)  # 30,000 distinct conversations: a build of several seconds
    dataset_id = _dataset(state, blobs, "acme", examples)
    spec = {"dataset_id": dataset_id, "recipe": {}, "shard_size": 5000}
    job = state.jobs.create("acme", decode_spec("build", spec))

    first = _start_worker(settings, settings.data_dir / "worker1.log")
    try:
        enqueue(settings, BUILD_TASK, [job["id"]])
        deadline = time.monotonic() + 30
        while (state.jobs.get(job["id"]) or {}).get("done", 0) == 0:
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the main process and its pool child, mid-build
        first.wait()
    finally:
        stop(first)
    assert state.jobs.get(job["id"])["status"] == "running"  # type: ignore[index]

    second = _start_worker(settings, settings.data_dir / "worker2.log")
    try:
        done = _wait(state, job["id"], timeout=180)
        undisturbed = state.jobs.create("acme", decode_spec("build", spec))
        enqueue(settings, BUILD_TASK, [undisturbed["id"]])
        calm = _wait(state, undisturbed["id"], timeout=120)
    finally:
        stop(second)
    blobs = LocalBlobStore(settings.blob_root)
    # identical artifacts (the reports but for the build they name)
    assert artifact_digests(blobs, done) == artifact_digests(blobs, calm)
    assert done["status"] == "succeeded", done
    assert done["result"]["shards"] == 6
    assert done["result"]["examples"] == len(examples)
    statuses = [json.loads(d)["status"] for _, kind, d in state.jobs.events(job["id"]) if kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]


def test_cancel_stops_a_sharded_build_and_leaves_no_final_artifacts(settings: Settings) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    examples = distinct_sharegpt(10)
    dataset_id = _dataset(state, blobs, "acme", examples)
    job = state.jobs.create(
        "acme", decode_spec("build", {"dataset_id": dataset_id, "recipe": {}, "shard_size": 200})
    )
    worker = _start_worker(settings, settings.data_dir / "worker.log")
    try:
        enqueue(settings, BUILD_TASK, [job["id"]])
        deadline = time.monotonic() + 30
        while (state.jobs.get(job["id"]) or {}).get("done", 0) == 0:
            assert time.monotonic() < deadline, "no shard finished"
            time.sleep(0.02)
        state.jobs.request_cancel(job["id"])
        done = _wait(state, job["id"], timeout=60)
    finally:
        stop(worker)
    assert done["status"] == "cancelled"
    statuses = [json.loads(d)["status"] for _, kind, d in state.jobs.events(job["id"]) if kind == "status"]
    assert statuses == ["queued", "running", "cancelled"]
    left = blobs.list(f"acme/jobs/{job['id']}")
    assert left == []  # no final artifacts, no work files
