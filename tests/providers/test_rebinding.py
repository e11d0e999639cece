"""The SDK's connections go through the SSRF guard: resolved again for every request, pinned to
the checked address, refused when the provider's name rebinds to an internal one, no env proxies.

Names under `.rebind.test` exist only in the stub resolver (`.test` never resolves in real DNS),
so a request that reaches the fake provider by such a name went through the guard's lookup.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.providers.client import ProviderProfile, is_transient, make_client, upload_file, wait_processed
from service.providers.fake import FakeProvider
from service.ssrf import HostUnresolved, UrlRefused
from tests.providers.conftest import API_KEY, LOOPBACK, Listener, chat_examples, write_jsonl
from tests.unit.test_ssrf import stub

NAME = "provider.rebind.test"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address a socket of this process connected to (httpcore opens them this way)."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append((str(address[0]), int(address[1])))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return made


def _profile(fake: FakeProvider) -> ProviderProfile:
    port = int(fake.url.rsplit(":", 1)[1])
    return ProviderProfile(name="fake", base_url=f"http://{NAME}:{port}/v1", api_key=API_KEY)


def test_the_sdk_reaches_the_provider_by_name_at_the_checked_address(
    fake: FakeProvider, tmp_path: Path, connections: list[tuple[str, int]]
) -> None:
    looked_up, resolve = stub({NAME: ["127.0.0.1"]})
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(12))
    with make_client(_profile(fake), allow=LOOPBACK, resolve=resolve, max_retries=0) as client:
        file_id = upload_file(client, path, "t.jsonl")
        assert wait_processed(client, file_id, timeout_s=5, poll_s=0.02).status == "processed"
    sent = [r for r in fake.state()["requests"] if r["path"].startswith("/v1/files")]
    assert len(sent) >= 2
    assert len(looked_up) == len(sent)  # looked up again for every request, not once per client
    port = int(fake.url.rsplit(":", 1)[1])
    assert connections
    assert set(connections) == {("127.0.0.1", port)}  # the checked address, never the name


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("127.0.0.3", "a loopback address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("10.0.0.1", "a private address"),
    ],
)
def test_a_name_that_rebinds_between_requests_is_refused_before_connecting(
    target: str, rule: str, fake: FakeProvider, tmp_path: Path, connections: list[tuple[str, int]]
) -> None:
    """Upload while the name points at the allowlisted provider, then rebind it: the next poll
    (a new connection) is refused, and the internal address sees no connection at all."""
    port = int(fake.url.rsplit(":", 1)[1])
    internal = Listener("127.0.0.3", port) if target == "127.0.0.3" else None  # loopback, not allowlisted
    table = {NAME: ["127.0.0.1"]}
    _, resolve = stub(table)
    try:
        with make_client(_profile(fake), allow=LOOPBACK, resolve=resolve, max_retries=2) as client:
            file_id = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(12)), "t.jsonl")
            before = len(fake.state()["requests"])
            table[NAME] = [target]  # the attacker's DNS changes its answer
            with pytest.raises(UrlRefused, match=re.escape(f"{NAME} resolves to {target}, {rule}")) as e:
                wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    finally:
        if internal is not None:
            internal.close()
    assert not is_transient(e.value)  # a refusal fails the job; it is not retried
    assert API_KEY not in str(e.value)
    assert all(host != target for host, _ in connections)
    assert internal is None or internal.accepted == 0
    assert len(fake.state()["requests"]) == before  # not sent anywhere else either


def test_a_name_that_stops_resolving_is_transient(fake: FakeProvider) -> None:
    _, resolve = stub({})
    with (
        make_client(_profile(fake), allow=LOOPBACK, resolve=resolve, max_retries=0) as client,
        pytest.raises(HostUnresolved) as e,
    ):
        client.files.list()
    assert is_transient(e.value)  # DNS may answer later, as when the SDK resolved names itself


@pytest.fixture
def proxy() -> Iterator[Listener]:
    listener = Listener("127.0.0.1")
    yield listener
    listener.close()


def test_environment_proxies_are_ignored(
    fake: FakeProvider, proxy: Listener, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A proxy would connect on our behalf, to wherever it resolves the name: never use one."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    profile = ProviderProfile(name="fake", base_url=fake.base_url, api_key=API_KEY)
    with make_client(profile, allow=LOOPBACK, max_retries=0) as client:
        upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
    assert proxy.accepted == 0
    assert len(fake.state()["files"]) == 1
