"""The fault suite's shared parts: production timeouts, real worker processes that can be killed
whole, and the API reached over HTTP (builds, job status, event streams, artifact downloads).

The session's redis-server and the per-test settings come from tests/conftest.py and
tests/integration/conftest.py. Sizes are small by default (CI); environment variables raise them
locally (each test names its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.jobs.leases import HeldLease, Leases
from service.providers.fake import FakeProvider, run_fake_provider
from service.run import stop, worker_command
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import TERMINAL, State
from tests.conftest import jsonl
from tests.integration.conftest import ROOT, settings, settings_env

__all__ = ["settings"]  # the per-test settings fixture (a fresh Redis database and data folder)


def env_int(name: str, default: int) -> int:
    """A size: `default` in CI, the environment's value when set (e.g. TUNESET_FAULTS_KILLS=10)."""
    return int(os.environ.get(name) or default)


Figure = Callable[[str], None]


@pytest.fixture
def figure(capsys: pytest.CaptureFixture[str]) -> Figure:
    """Print a measured figure even when output is captured (CI logs keep it)."""

    def show(line: str) -> None:
        with capsys.disabled():
            print(f"\n[figure] {line}", flush=True)

    return show


@pytest.fixture
def prod_settings(settings: Settings) -> Settings:
    """The production timeouts: a 1 h task limit and a 2 h visibility timeout, so only the leases
    can bring a lost step back within the tests' time; a provider on loopback may be registered."""
    defaults = Settings()
    return settings.model_copy(
        update={
            "build_time_limit_s": defaults.build_time_limit_s,
            "visibility_timeout_s": defaults.visibility_timeout_s,
            "secret_key": SecretStr(new_key()),  # provider credentials are stored encrypted
            "webhook_allow_hosts": ["127.0.0.1"],  # the fake provider, on loopback
        }
    )


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """The fake provider on loopback, its files processed at once."""
    with run_fake_provider(step_seconds=0.05) as provider:
        yield provider


def worker_env(settings: Settings) -> dict[str, str]:
    env = settings_env(settings)
    if settings.secret_key is not None:
        env["TUNESET_SECRET_KEY"] = settings.secret_key.get_secret_value()
    env["TUNESET_WEBHOOK_ALLOW_HOSTS"] = json.dumps(settings.webhook_allow_hosts)
    env["TUNESET_ORPHAN_SWEEP_INTERVAL_S"] = str(settings.orphan_sweep_interval_s)
    env["TUNESET_ORPHAN_AFTER_S"] = str(settings.orphan_after_s)
    return env


class Workers:
    """Real `celery worker` processes, each in its own process group so that one kill reaches its
    main process and its pool child at once (an OOM kill or a lost node)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start a worker; with `wait`, return once it consumes."""
        log = self.settings.data_dir / f"worker-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*worker_command(self.settings), "-n", f"{name}@%h"],
                env=worker_env(self.settings),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name], self.logs[name] = proc, log
        if wait:
            self.wait_ready(name)
        return proc

    def wait_ready(self, name: str) -> None:
        proc, log = self.procs[name], self.logs[name]
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def kill(self, name: str) -> float:
        """SIGKILL the worker's whole process group; returns when (monotonic) it was sent."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        at = time.monotonic()
        proc.wait()
        return at

    def ready(self) -> list[str]:
        """The workers alive and consuming."""
        return [
            name
            for name, proc in self.procs.items()
            if proc.poll() is None and b"ready." in self.logs[name].read_bytes()
        ]

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop_all(self) -> None:
        """SIGTERM to all at once (a warm shutdown each), then stop them one by one."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            stop(proc)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a pool child left behind
        self.procs.clear()

    def dump_logs(self) -> None:
        for name, log in self.logs.items():
            print(f"--- worker {name}:\n{log.read_text()[-6000:]}")


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test itself failed, so its fixtures can show the workers' logs."""
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture
def workers(prod_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Workers]:
    pool = Workers(prod_settings)
    try:
        yield pool
    finally:
        pool.stop_all()
        if request.node.stash.get(FAILED, False):
            pool.dump_logs()


def owned_by(leases: list[HeldLease], pid: int) -> list[HeldLease]:
    """The leases a worker (its main process id) holds."""
    mark = f"{socket.gethostname()}:{pid}:"
    return [lease for lease in leases if lease.owner.startswith(mark)]


def lease_table(settings: Settings) -> Leases:
    return Leases(State.from_url(settings.redis_url).r, settings.lease_ttl_s)


def drained(settings: Settings, timeout: float = 60) -> None:
    """Wait until the queues are empty and no step is held: every message sent has run."""
    r = State.from_url(settings.redis_url).r
    table = lease_table(settings)
    deadline = time.monotonic() + timeout
    while r.llen(settings.cpu_queue) or r.llen(settings.io_queue) or table.held():
        assert time.monotonic() < deadline, "steps still queued or running"
        time.sleep(0.1)


class Api:
    """A tenant's calls to the API over HTTP."""

    def __init__(self, client: TestClient[Any], key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def dataset(self, rows: list[Any]) -> str:
        ds = self.client.post("/v1/datasets", json={"name": "faults", "kind": "chat"}, headers=self.headers)
        assert ds.status_code == 201, ds.text
        pushed = self.client.post(
            f"/v1/datasets/{ds.json()['id']}/batches",
            content=jsonl(*rows),
            headers={**self.headers, "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201, pushed.text
        dataset_id: str = ds.json()["id"]
        return dataset_id

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post(path, json=body, headers=self.headers)
        assert r.status_code in (201, 202), r.text
        out: dict[str, Any] = r.json()
        return out

    def build(self, dataset_id: str, recipe: dict[str, Any]) -> dict[str, Any]:
        """Start a build; the answer names its job (and its upload job, when asked)."""
        return self.post(f"/v1/datasets/{dataset_id}/builds", recipe)

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"job not finished after {timeout:.0f} s: {job}"
            time.sleep(0.1)
        return job

    def statuses(self, job_id: str) -> list[str]:
        """Every status event of a finished job, from its event stream (it ends with the job)."""
        with self.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=self.headers) as stream:
            text = "".join(stream.iter_text())
        out = []
        for block in text.replace("\r\n", "\n").strip().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if fields.get("event") == "status":
                out.append(json.loads(fields["data"])["status"])
        return out

    def digests(self, job_id: str) -> dict[str, str]:
        """Each listed artifact's SHA-256 over its HTTP download, checked against the listing."""
        r = self.client.get(f"/v1/jobs/{job_id}/artifacts", headers=self.headers)
        assert r.status_code == 200, r.text
        out = {}
        for item in r.json()["items"]:
            data = self.client.get(f"/v1/jobs/{job_id}/artifacts/{item['name']}", headers=self.headers)
            assert data.status_code == 200, data.text
            digest = hashlib.sha256(data.content).hexdigest()
            assert digest == item["sha256"], item["name"]
            out[item["name"]] = digest
        return out


@pytest.fixture
def api(prod_settings: Settings) -> Iterator[Api]:
    key = State.from_url(prod_settings.redis_url).create_key("acme")
    with TestClient(create_app(prod_settings)) as client:
        yield Api(client, key)
