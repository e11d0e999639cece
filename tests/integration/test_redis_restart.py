"""Redis restarts (with AOF) while a build runs: the job still ends once, the workers keep consuming."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.run import free_port, start_redis, stop
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import State
from tests.conftest import mtbench_conversations
from tests.integration.test_build_worker import _dataset, _wait
from tests.integration.test_worker_faults import _start_worker, distinct_sharegpt


def test_a_redis_restart_mid_build(tmp_path: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis = start_redis(redis_dir, port)
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        data_dir=tmp_path / "data",
        build_time_limit_s=15,
        visibility_timeout_s=20,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        state = State.from_url(settings.redis_url)
        blobs = LocalBlobStore(settings.blob_root)
        examples = distinct_sharegpt(60)
        dataset_id = _dataset(state, blobs, "acme", examples)
        job = state.jobs.create("acme", decode_spec("build", {"dataset_id": dataset_id, "recipe": {}}))
        worker = _start_worker(settings, settings.data_dir / "worker.log")
        enqueue(settings, BUILD_TASK, [job["id"]])
        deadline = time.monotonic() + 30
        while (state.jobs.get(job["id"]) or {}).get("done", 0) == 0:
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        stop(redis)  # SIGTERM: redis-server flushes its AOF and exits
        time.sleep(1)
        redis = start_redis(redis_dir, port)

        # a shard task in flight when Redis went down is handed out again after the visibility
        # timeout (kombu 5.6 restores unacked messages slowly: about a minute more)
        done = _wait(state, job["id"], timeout=300)
        assert done["status"] in {"succeeded", "failed"}
        statuses = [json.loads(d)["status"] for _, k, d in state.jobs.events(job["id"]) if k == "status"]
        assert statuses.count(done["status"]) == 1
        assert len([s for s in statuses if s in {"succeeded", "failed", "cancelled"}]) == 1

        assert worker.poll() is None, (settings.data_dir / "worker.log").read_text()  # the worker survived
        second_ds = _dataset(state, blobs, "acme", mtbench_conversations())
        second = state.jobs.create("acme", decode_spec("build", {"dataset_id": second_ds, "recipe": {}}))
        enqueue(settings, BUILD_TASK, [second["id"]])
        assert _wait(state, second["id"], timeout=60)["status"] == "succeeded"  # and keeps consuming
    finally:
        if worker is not None:
            stop(worker)
        stop(redis)
