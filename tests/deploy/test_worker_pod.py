"""What a worker's pod relies on, with real worker processes: the liveness probe fails when the
worker's event loop stops and passes again when it resumes, and SIGTERM (as Kubernetes sends it,
with the pod's REMAP_SIGTERM=SIGQUIT) hands a running step back to its queue within the soft
shutdown budget instead of holding it until the visibility timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.state import State
from tests.conftest import jsonl, mtbench_conversations
from tests.deploy.conftest import StartWorker, Worker, scrape, value
from tests.integration.conftest import ROOT


def probe(worker: Worker, max_age: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNESET_WORKER_HEARTBEAT_FILE": str(worker.heartbeat)}
    return subprocess.run(
        [sys.executable, "-m", "workers.probe", "--max-age", str(max_age)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not callable(check) or not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_the_liveness_probe_follows_the_worker_event_loop(start_worker: StartWorker, tmp_path: Path) -> None:
    missing = Worker(None, 0, tmp_path / "none.log", tmp_path / "no-heartbeat")  # type: ignore[arg-type]
    none = probe(missing, 60)
    assert none.returncode == 1
    assert "no heartbeat" in none.stderr
    worker = start_worker(concurrency=1)
    assert probe(worker, 8).returncode == 0
    os.kill(worker.proc.pid, signal.SIGSTOP)  # the main process: its event loop writes the heartbeat
    try:
        time.sleep(10)
        stale = probe(worker, 8)
        assert stale.returncode == 1
        assert "last heartbeat" in stale.stderr
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    _until(lambda: probe(worker, 8).returncode == 0, 15, "the heartbeat did not resume")


@pytest.fixture
def silent_receiver() -> Iterator[tuple[int, list[socket.socket]]]:
    """A webhook receiver that accepts and never answers: a delivery step that runs until its
    timeout, long enough to be running when the pod is stopped."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], held
    finally:
        stopping.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_sigterm_hands_a_running_step_back_to_its_queue(
    settings: Settings, start_worker: StartWorker, silent_receiver: tuple[int, list[socket.socket]]
) -> None:
    port, held = silent_receiver
    state = State.from_url(settings.redis_url)
    key = state.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        hook = client.post(
            "/v1/webhooks/subscriptions", json={"url": f"http://127.0.0.1:{port}/h"}, headers=auth
        )
        assert hook.status_code == 201, hook.text
        ds = client.post("/v1/datasets", json={"name": "m", "kind": "chat"}, headers=auth).json()["id"]
        pushed = client.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*mtbench_conversations()[:12]),
            headers={**auth, "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201
        job_id = client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth).json()["job_id"]
        # no build worker: the build stays queued, and its cancellation is the job ending announced
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code in (200, 202)

    worker = start_worker(
        queues=settings.io_queue,
        concurrency=1,
        REMAP_SIGTERM="SIGQUIT",
        TUNESET_WORKER_SOFT_SHUTDOWN_S="1",
        TUNESET_WEBHOOK_TIMEOUT_S="60",
    )
    _until(lambda: bool(held), 30, "the delivery step did not start")
    assert state.r.llen(settings.io_queue) == 0  # the step is the worker's now, not the queue's
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)
    stopped = time.monotonic() - sent
    # back in its queue (another worker takes it at once), well before the 90 s visibility timeout
    _until(lambda: state.r.llen(settings.io_queue) == 1, 5, "the step was not handed back")
    print(f"\nSIGTERM → worker gone in {stopped:.1f} s, its running step back in {settings.io_queue}")
    assert stopped < 15, worker.log.read_text()[-3000:]

    # the next worker takes it at once, and counts it as handed out again
    taken = len(held)
    other = start_worker(
        queues=settings.io_queue, concurrency=1, REMAP_SIGTERM="SIGQUIT", TUNESET_WORKER_SOFT_SHUTDOWN_S="1"
    )
    _until(lambda: len(held) > taken, 30, "no worker took the handed-back step")
    found = scrape(other)
    assert value(found, "tuneset_redeliveries_total", step="deliver", source="broker") == 1
    assert value(found, "tuneset_steps_running", step="deliver") == 1
