"""JSON logs (TUNESET_LOG_FORMAT=json, as deploy/k8s sets it): every line of a request carries its
request id, tenant and job id, and no key or secret ever appears, whatever logs it."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import logs
from service.run import free_port, stop
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import State

CANARY_PROVIDER_KEY = "sk-proj-canaryCANARY0123456789abcdef"


class Api:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`tuneset api` as a pod runs it: its own process, JSON lines on stderr (shared by this
    module's tests: each reads the lines of its own requests)."""
    State.from_url(redis_url).r.flushdb()
    tmp_path = tmp_path_factory.mktemp("api")
    port = free_port()
    log = tmp_path / "api.log"
    env = {
        **os.environ,
        "TUNESET_REDIS_URL": redis_url,
        "TUNESET_DATA_DIR": str(tmp_path / "data"),
        "TUNESET_LOG_FORMAT": "json",
        "TUNESET_SECRET_KEY": new_key(),
        "TUNESET_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',  # no DNS here: loopback URLs, exempted
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        server = Api(f"http://127.0.0.1:{port}", log)
        while True:
            try:
                if server.call("GET", "/livez")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield server
    finally:
        stop(proc)


def test_request_lines_carry_their_request_id_tenant_and_job(api: Api, redis_url: str) -> None:
    key = State.from_url(redis_url).create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    status, headers, _ = api.call("GET", "/v1/datasets", headers={**auth, "X-Request-ID": "req-test-42"})
    assert status == 200
    assert headers["x-request-id"] == "req-test-42"
    status, headers, _ = api.call("GET", "/v1/jobs/job_doesnotexist", headers=auth)
    assert status == 404
    generated = headers["x-request-id"]
    assert len(generated) == 32  # none given: one is made, and returned
    time.sleep(0.5)
    lines = api.lines()
    (listed,) = [line for line in lines if line.get("request_id") == "req-test-42"]
    assert listed["tenant"] == "acme"
    assert listed["route"] == "/v1/datasets"
    assert listed["status"] == 200
    assert listed["level"] == "INFO"
    (missing,) = [line for line in lines if line.get("request_id") == generated]
    assert missing["job_id"] == "job_doesnotexist"
    assert missing["tenant"] == "acme"
    assert missing["status"] == 404


def test_keys_and_secrets_never_reach_the_log(api: Api, redis_url: str) -> None:
    key = State.from_url(redis_url).create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    provider = {"name": "p", "base_url": "http://127.0.0.1:9/v1", "api_key": CANARY_PROVIDER_KEY}
    created = api.call("POST", "/v1/providers", provider, headers=auth)
    assert created[0] == 201, created
    hook = api.call("POST", "/v1/webhooks/subscriptions", {"url": "http://127.0.0.1:9/hook"}, headers=auth)
    assert hook[0] == 201, hook
    secret = hook[2]["secret"]
    # a wrong key and a malformed body are refused (and logged) without their contents
    assert api.call("GET", "/v1/datasets", headers={"Authorization": f"Bearer {key}x"})[0] == 401
    assert api.call("POST", "/v1/providers", {**provider, "base_url": 7}, headers=auth)[0] == 400
    time.sleep(0.5)
    text = api.log.read_text()
    assert len(api.lines()) >= 4
    for needle in (CANARY_PROVIDER_KEY, CANARY_PROVIDER_KEY[8:], key, secret, secret[6:]):
        assert needle not in text


def test_the_formatter_masks_what_a_careless_line_would_leak() -> None:
    """What the JSON lines do with a secret that got into a message, its arguments, extra fields
    or a traceback: only its prefix is left."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.use_json(handler)
    logger = logging.getLogger("tuneset.test.masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bound(request_id="r1", job_id="job_1", tenant="acme"):
            logger.warning(
                "calling with %s", CANARY_PROVIDER_KEY, extra={"header": "Bearer ts_abcdefghijklmnop"}
            )
            logger.warning("signing secret whsec_c2VjcmV0c2VjcmV0c2VjcmV0 and api_key=hunter2hunter2")
            try:
                raise RuntimeError(f"provider refused {CANARY_PROVIDER_KEY}")
            except RuntimeError:
                logger.exception("boom")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    first, second, third, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "calling with sk-proj-***"
    assert first["header"] == "Bearer ***"
    assert (first["request_id"], first["job_id"], first["tenant"]) == ("r1", "job_1", "acme")
    assert second["message"] == "signing secret whsec_*** and api_key=***"
    assert "RuntimeError: provider refused sk-proj-***" in third["exc_info"]
    assert "request_id" not in outside
    assert CANARY_PROVIDER_KEY[8:] not in stream.getvalue()


def test_text_format_leaves_logging_alone() -> None:
    root = logging.getLogger()
    handlers = list(root.handlers)
    logs.configure(Settings().log_format)  # the default
    assert root.handlers == handlers
