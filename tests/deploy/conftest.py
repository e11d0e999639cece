"""Real worker processes started the way deploy/k8s starts them (their pod's environment), on the
session's redis-server, and what their metrics say."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.run import free_port, stop, worker_command
from service.settings import Settings
from service.store.secrets import new_key
from tests.integration.conftest import ROOT, fresh_settings, settings_env


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return fresh_settings(redis_url, tmp_path, secret_key=new_key(), webhook_allow_hosts=["127.0.0.1"])


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, heartbeat: Path) -> None:
        self.proc, self.port, self.log, self.heartbeat = proc, port, log, heartbeat


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    """`start_worker(queues=..., concurrency=..., **env)`: a worker with its pod's settings
    (metrics summed on a port, a heartbeat file, JSON logs), running until the test ends."""
    started: list[Worker] = []

    def start(
        queues: str | None = None, concurrency: int = 2, args: tuple[str, ...] = (), **extra_env: str
    ) -> Worker:
        n = len(started)
        port = free_port()
        log, heartbeat, metrics = (
            tmp_path / f"worker{n}.log",
            tmp_path / f"heartbeat{n}",
            tmp_path / f"metrics{n}",
        )
        metrics.mkdir()
        env = {
            **settings_env(settings),
            "TUNESET_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key else "",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "TUNESET_WORKER_METRICS_PORT": str(port),
            "TUNESET_WORKER_HEARTBEAT_FILE": str(heartbeat),
            "TUNESET_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
            "TUNESET_LOG_FORMAT": "json",
            **extra_env,
        }
        command = [*worker_command(settings, concurrency=concurrency), *args]
        if queues is not None:
            command[command.index("-Q") + 1] = queues
        with log.open("wb") as out:
            proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(proc, port, log, heartbeat)
        started.append(worker)
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return worker

    yield start
    for worker in started:
        stop(worker.proc)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(worker: Worker) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10) as response:
        return samples(response.read().decode())
