"""DNS rebinding against a provider: its name resolves to an allowlisted address when it is
registered, then to an internal one when the worker uploads. The upload fails with a coded error
naming the refusal, and the internal address never sees a connection, nor the key.

Real parts: the session's redis-server, the API over HTTP (in this process, resolver stubbed), a
real Celery worker process started with the same stub resolver (`tests.integration.stub_dns`).
127.0.0.2 plays the public provider (the only allowlisted address); 127.0.0.1, which is not
allowlisted here, plays the internal service: a listener there counts connections.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service.run import stop, worker_command
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import TERMINAL, State
from tests.conftest import jsonl, sharegpt_conversations
from tests.integration import stub_dns
from tests.integration.test_fine_tune_flow import api, loop_env
from tests.integration.test_worker_faults import _start_worker
from tests.providers.conftest import Listener

__all__ = ["api"]  # the fixture, served with this module's `loop_settings`

API_KEY = "sk-tenant-secret-0123456789abcdef"
REBINDS = {  # provider name -> (its host, the address it rebinds to, the rule that refuses it)
    "loopback": ("svc.rebind.test", "127.0.0.1", "a loopback address"),
    "metadata": ("imds.rebind.test", "169.254.169.254", "a cloud metadata address"),
    "private": ("intranet.rebind.test", "10.0.0.1", "a private address"),
}


@pytest.fixture
def loop_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"secret_key": SecretStr(new_key()), "webhook_allow_hosts": ["127.0.0.2"]}
    )


@pytest.fixture
def dns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    table = tmp_path / "dns.json"
    stub_dns.write_table(table, {})
    monkeypatch.setattr(socket, "getaddrinfo", stub_dns.getaddrinfo_from(table))
    return table


@pytest.fixture
def internal() -> Iterator[Listener]:
    listener = Listener("127.0.0.1")
    yield listener
    listener.close()


def _wait(http: httpx.Client, job_id: str, internal: Listener, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        assert internal.accepted == 0, "the worker connected to the internal address"
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.mark.slow
def test_a_provider_name_rebound_to_an_internal_address_fails_the_upload_unsent(
    loop_settings: Settings, api: str, dns: Path, internal: Listener, tmp_path: Path
) -> None:
    settings = loop_settings
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "tests.integration.stub_dns", *worker_command(settings)[3:]]
    env = {**loop_env(settings), stub_dns.TABLE_ENV: str(dns)}
    worker = _start_worker(settings, log, env=env, command=command)
    try:
        key = State.from_url(settings.redis_url).create_key("acme")
        http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        # registration: every name resolves to the allowlisted "public" address
        stub_dns.write_table(dns, {host: ["127.0.0.2"] for host, _, _ in REBINDS.values()})
        for name, (host, _, _) in REBINDS.items():
            body = {"name": name, "base_url": f"http://{host}:{internal.port}/v1", "api_key": API_KEY}
            r = http.post("/v1/providers", json=body)
            assert r.status_code == 201, r.text

        # the attacker's DNS changes its answers before the upload
        stub_dns.write_table(dns, {host: [target] for host, target, _ in REBINDS.values()})
        ds = http.post("/v1/datasets", json={"name": "support", "kind": "chat"}).json()["id"]
        r = http.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*sharegpt_conversations()[:20]),
            headers={"Content-Type": "application/jsonl"},
        )
        assert r.status_code == 201, r.text
        uploads = {}
        for name in REBINDS:
            r = http.post(f"/v1/datasets/{ds}/builds", json={"upload": {"provider": name}})
            assert r.status_code == 202, r.text
            uploads[name] = r.json()["upload_job_id"]

        for name, (host, target, rule) in REBINDS.items():
            job = _wait(http, uploads[name], internal)
            assert job["status"] == "failed", (name, job)
            assert job["error"]["code"] == "url_refused", (name, job["error"])
            message = job["error"]["message"]
            assert "SSRF" in message
            assert f"{host} resolves to {target}, {rule}, and is not allowlisted" in message
            assert API_KEY not in json.dumps(job)
    finally:
        stop(worker)
    assert internal.accepted == 0  # nothing, not even a TCP handshake, reached the internal address
    assert API_KEY not in log.read_text()
