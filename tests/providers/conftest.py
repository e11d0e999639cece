"""One fake provider for the session (a real uvicorn server on a free 127.0.0.1 port), reset and
reconfigured before every test; the official SDK talks to it over HTTP."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from service.providers.client import ProviderProfile, make_client
from service.providers.fake import FakeProvider, run_fake_provider
from service.ssrf import Allowlist

API_KEY = "sk-test-0123456789"
LOOPBACK = Allowlist(hosts=frozenset({"127.0.0.1"}))
"""The fake provider listens on loopback: allowlisted, as `tuneset dev` and operators do it."""
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"fake-provider-webhook-secret-32b").decode()
DEFAULTS: dict[str, Any] = {
    "api_key": None,
    "step_seconds": 0.05,
    "processing_seconds": 0.05,
    "webhook_url": None,
    "webhook_secret": None,
    "webhook_attempts": 5,
    "webhook_backoff_s": 0.05,
    "max_file_bytes": 512 * 2**20,
    "max_part_bytes": 64 * 2**20,
    "min_examples": 10,
}


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProvider]:
    with run_fake_provider(**DEFAULTS) as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeProvider) -> FakeProvider:
    fake_server.reset()
    fake_server.configure(**DEFAULTS)
    return fake_server


@pytest.fixture
def profile(fake: FakeProvider) -> ProviderProfile:
    return ProviderProfile(name="fake", base_url=fake.base_url, api_key=API_KEY)


@pytest.fixture
def client(profile: ProviderProfile) -> Iterator[openai.OpenAI]:
    c = make_client(profile, allow=LOOPBACK, max_retries=2, timeout=10)
    yield c
    c.close()


def chat_examples(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(n)
    ]


def preference_examples(n: int) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Name a prime above {i}."}]},
            "preferred_output": [{"role": "assistant", "content": f"{_next_prime(i)} is prime."}],
            "non_preferred_output": [{"role": "assistant", "content": f"{2 * i + 2}."}],
        }
        for i in range(n)
    ]


def _next_prime(n: int) -> int:
    k = n + 1
    while k < 2 or any(k % d == 0 for d in range(2, int(k**0.5) + 1)):
        k += 1
    return k


def jsonl_bytes(values: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(v).encode() + b"\n" for v in values)


def write_jsonl(path: Path, values: list[dict[str, Any]]) -> Path:
    path.write_bytes(jsonl_bytes(values))
    return path


@dataclass
class Receiver:
    """A local webhook receiver: records every POST and answers with the queued statuses
    (204 once they run out)."""

    url: str = ""
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[bytes, dict[str, str]]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout), self.received
            return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = rec.statuses.popleft() if rec.statuses else 204
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
            with rec.arrived:
                rec.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
                rec.arrived.notify_all()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/openai"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Listener:
    """A TCP socket that counts the connections it accepts (and closes them at once): stands in
    for an internal service that must never be reached."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(5)
