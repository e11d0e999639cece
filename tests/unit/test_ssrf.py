"""The SSRF guard and one delivery attempt through it.

Every client here connects through `LoopbackOnly`: a transport that fails the test when asked to
connect anywhere but 127.0.0.1, so a broken guard shows up as a failure, never as traffic.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service.settings import Settings
from service.ssrf import Allowlist, Resolver, UrlRefused, check_url, guarded_client, refusal
from service.webhooks.send import send_once

NOTHING = Allowlist()
LOCAL = Allowlist(hosts=frozenset({"127.0.0.1"}))


class LoopbackOnly(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.connected: list[str] = []
        self.violations: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "127.0.0.1":
            self.violations.append(str(request.url))
            raise AssertionError(f"the guard let a connection to {request.url} through")
        self.connected.append(str(request.url))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def loopback() -> Iterator[LoopbackOnly]:
    transport = LoopbackOnly()
    yield transport
    transport.close()
    assert transport.violations == []  # even if something swallowed the AssertionError


class Receiver:
    """A real HTTP server on 127.0.0.1 recording what it receives and answering `status`."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status = 204
        self.headers: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(("POST", self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def stub(table: dict[str, list[str]]) -> tuple[list[str], Resolver]:
    """A resolver answering from `table` (mutable: tests rebind names) and logging lookups."""
    looked_up: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        looked_up.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    return looked_up, resolve


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"a numeric host must not go to the resolver: {host}")


# -- check_url ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://10.0.0.1", "10.0.0.1, a private address"),
        ("http://[::1]:8080/", "::1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped form of 169.254.169.254, a cloud metadata address"),
        ("http://[64:ff9b::a00:1]/", "NAT64 form of 10.0.0.1, a private address"),
        ("http://[::127.0.0.1]/", "IPv4-compatible form of 127.0.0.1, a loopback address"),
        ("http://[2002:a00:1::1]/", "6to4 form of 10.0.0.1, a private address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://[fd12:3456::1]/", "a private (unique local) address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://[ff02::1]/", "a multicast address"),
        ("http://[::]/", "an unspecified address"),
        ("http://0.0.0.0:8000/", "an unspecified address"),
        ("http://100.64.0.1/", "a shared (CGNAT) address"),
        ("http://100.100.100.200/", "a cloud metadata address"),
        ("http://169.254.170.2/v2/credentials", "a cloud metadata address"),
        ("http://168.63.129.16/", "a cloud metadata address"),
        ("http://172.31.255.255/", "a private address"),
        ("http://192.168.1.1/", "a private address"),
        ("http://169.254.1.1/", "a link-local address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://240.0.0.1/", "a reserved address"),
        ("http://255.255.255.255/", "the broadcast address"),
        ("http://192.0.2.10/", "a special-purpose (non-public) address"),
        # numeric spellings of 127.0.0.1 that browsers and inet_aton accept
        ("http://2130706433/", "127.0.0.1, a loopback address"),
        ("http://0x7f.1/", "127.0.0.1, a loopback address"),
        ("http://127.1/", "127.0.0.1, a loopback address"),
        ("http://0x7f000001/", "127.0.0.1, a loopback address"),
        ("http://127.0.0.1./", "127.0.0.1, a loopback address"),
        ("http://0/", "0.0.0.0, an unspecified address"),
    ],
)
def test_refused_addresses_name_the_rule(url: str, rule: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_url(url, NOTHING, no_dns)
    assert rule in refused.value.reason
    assert "not allowlisted" in refused.value.reason


@pytest.mark.parametrize(
    "url",
    [
        "http://1.2.3.4.5/",  # ends in a number, five parts
        "http://256.1/",  # first part over 255
        "http://1.2.3.4294967296/",
        "http://foo.0x7f/",  # a name part in front of a numeric last label
        "http://0x7g.1/",
        "http://0177.0.0.1/",  # httpx itself refuses leading zeros in a four-part address
    ],
)
def test_ambiguous_numeric_hosts_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url(url, NOTHING, no_dns)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com:70/_GET",
        "ws://example.com/",
        "dict://example.com:11211/",
        "http:///path-only",
        "not a url",
        "https://user:pass@example.com/",
        "http://[fe80::1%25eth0]/",
    ],
)
def test_non_http_schemes_and_odd_urls_are_refused(url: str) -> None:
    looked_up, resolve = stub({"example.com": ["93.184.216.34"]})
    with pytest.raises(UrlRefused):
        check_url(url, NOTHING, resolve)
    assert looked_up == []  # refused before any lookup


def test_numeric_hosts_are_read_like_a_browser_reads_them() -> None:
    anything = Allowlist(networks=(ipaddress.ip_network("0.0.0.0/0"),))
    for host, ip in [
        ("1.2.3.0x", "1.2.3.0"),
        ("0x5d.0270.0xd822", "93.184.216.34"),
        ("1572395042", "93.184.216.34"),
    ]:
        assert check_url(f"http://{host}/", anything, no_dns).ips == (ip,)


def test_hostname_resolving_to_a_private_address_is_refused() -> None:
    _, resolve = stub({"hooks.example.com": ["93.184.216.34", "10.0.0.1"]})
    with pytest.raises(UrlRefused) as refused:
        check_url("https://hooks.example.com/x", NOTHING, resolve)
    assert refused.value.reason.startswith("hooks.example.com resolves to 10.0.0.1, a private address")


def test_unresolvable_host_is_refused() -> None:
    _, resolve = stub({})
    with pytest.raises(UrlRefused, match=re.escape("cannot resolve nowhere.example")):
        check_url("https://nowhere.example/", NOTHING, resolve)


def test_public_host_is_allowed_with_every_address_checked() -> None:
    looked_up, resolve = stub({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})
    target = check_url("https://Hooks.Example.com:8443/cb?x=1", NOTHING, resolve)
    assert looked_up == ["hooks.example.com"]
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com",
        8443,
        "/cb?x=1",
    )
    assert target.ips == ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")


def test_public_ipv4_in_ipv6_forms_are_allowed() -> None:
    assert refusal(ipaddress.ip_address("::ffff:93.184.216.34")) is None
    assert refusal(ipaddress.ip_address("64:ff9b::5db8:d822")) is None
    assert refusal(ipaddress.ip_address("93.184.216.34")) is None


def test_allowlisted_host_name_and_network() -> None:
    _, resolve = stub({"receiver.internal": ["10.1.2.3"], "other.internal": ["10.9.9.9"]})
    by_name = Allowlist(hosts=frozenset({"Receiver.Internal."}))
    assert check_url("http://receiver.internal/", by_name, resolve).ips == ("10.1.2.3",)
    with pytest.raises(UrlRefused):
        check_url("http://other.internal/", by_name, resolve)

    by_net = Allowlist(networks=(ipaddress.ip_network("10.9.0.0/16"),))
    assert check_url("http://other.internal/", by_net, resolve).ips == ("10.9.9.9",)
    assert check_url("http://[::ffff:10.9.1.1]/", by_net, no_dns).ips == ("::ffff:a09:101",)
    with pytest.raises(UrlRefused, match=re.escape("10.1.2.3, a private address")):
        check_url("http://receiver.internal/", by_net, resolve)


def test_allowlist_from_settings() -> None:
    settings = Settings(webhook_allow_hosts=["127.0.0.1"], webhook_allow_networks=["192.168.5.0/24"])
    allow = Allowlist.from_settings(settings)
    assert check_url("http://127.0.0.1:9/", allow, no_dns).ips == ("127.0.0.1",)
    assert check_url("http://2130706433/", allow, no_dns).ips == ("127.0.0.1",)
    assert check_url("http://192.168.5.7/", allow, no_dns).ips == ("192.168.5.7",)
    with pytest.raises(UrlRefused):
        check_url("http://192.168.6.7/", allow, no_dns)
    with pytest.raises(ValueError, match="ALLOW_NETWORKS"):
        Allowlist.from_settings(Settings(webhook_allow_networks=["not-a-net"]))


# -- the guarded client ---------------------------------------------------------------------------


def test_allowlisted_receiver_gets_the_post(receiver: Receiver, loopback: LoopbackOnly) -> None:
    with guarded_client(LOCAL, no_dns, timeout=5, transport=loopback) as client:
        response = client.post(f"http://127.0.0.1:{receiver.port}/hook?a=1", content=b'{"x":1}')
    assert response.status_code == 204
    [(method, path, headers, body)] = receiver.received
    assert (method, path, body) == ("POST", "/hook?a=1", b'{"x":1}')
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"


def test_connection_is_pinned_to_the_checked_address_with_the_name_as_host(
    receiver: Receiver, loopback: LoopbackOnly
) -> None:
    looked_up, resolve = stub({"receiver.test": ["127.0.0.1"]})
    allow = Allowlist(networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with guarded_client(allow, resolve, timeout=5, transport=loopback) as client:
        assert client.post(f"http://receiver.test:{receiver.port}/cb", content=b"{}").status_code == 204
    assert looked_up == ["receiver.test"]
    assert loopback.connected == [f"http://127.0.0.1:{receiver.port}/cb"]
    assert receiver.received[0][2]["Host"] == f"receiver.test:{receiver.port}"


def test_https_sends_the_name_as_sni(loopback: LoopbackOnly) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    _, resolve = stub({"hooks.example.com": ["93.184.216.34"]})
    with guarded_client(NOTHING, resolve, transport=httpx.MockTransport(answer)) as client:
        client.post("https://hooks.example.com/cb", content=b"{}")
    [request] = seen
    assert request.url.host == "93.184.216.34"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["host"] == "hooks.example.com"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/", "http://169.254.169.254/", "http://10.0.0.1/", "http://[::1]/"]
)
def test_guarded_client_refuses_before_connecting(url: str, loopback: LoopbackOnly) -> None:
    with guarded_client(NOTHING, no_dns, transport=loopback) as client, pytest.raises(UrlRefused):
        client.post(url, content=b"{}")
    assert loopback.connected == []


def test_rebinding_between_registration_and_delivery_is_refused(loopback: LoopbackOnly) -> None:
    table = {"rebind.example.com": ["93.184.216.34"]}
    looked_up, resolve = stub(table)
    check_url("http://rebind.example.com/cb", NOTHING, resolve)  # registration: fine
    table["rebind.example.com"] = ["10.0.0.1"]  # the attacker's DNS changes its answer
    refused = re.escape("resolves to 10.0.0.1, a private address")
    with (
        guarded_client(NOTHING, resolve, transport=loopback) as client,
        pytest.raises(UrlRefused, match=refused),
    ):
        client.post("http://rebind.example.com/cb", content=b"{}")
    assert looked_up == ["rebind.example.com", "rebind.example.com"]  # resolved again at send time
    assert loopback.connected == []


def test_redirect_is_not_followed(receiver: Receiver, loopback: LoopbackOnly) -> None:
    receiver.status = 302
    receiver.headers = {"Location": "http://10.0.0.1/"}
    with guarded_client(LOCAL, no_dns, transport=loopback) as client:
        response = client.post(f"http://127.0.0.1:{receiver.port}/", content=b"{}", follow_redirects=True)
    assert response.status_code == 302
    assert len(receiver.received) == 1
    assert loopback.connected == [f"http://127.0.0.1:{receiver.port}/"]


def test_next_address_is_tried_when_one_refuses_connections(
    receiver: Receiver, loopback: LoopbackOnly
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
    try:
        calls: list[str] = []

        class TwoPorts(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                calls.append(str(request.url.host))
                port = closed.getsockname()[1] if len(calls) == 1 else receiver.port
                return loopback.handle_request(
                    httpx.Request(
                        request.method,
                        request.url.copy_with(host="127.0.0.1", port=port),
                        headers=request.headers,
                        stream=request.stream,
                    )
                )

        _, resolve = stub({"two.test": ["127.0.0.2", "127.0.0.3"]})
        allow = Allowlist(hosts=frozenset({"two.test"}))
        with guarded_client(allow, resolve, transport=TwoPorts()) as client:
            assert client.post("http://two.test/", content=b"{}").status_code == 204
        assert calls == ["127.0.0.2", "127.0.0.3"]
    finally:
        closed.close()


# -- send_once ------------------------------------------------------------------------------------


def test_send_once_2xx_is_ok(receiver: Receiver, loopback: LoopbackOnly) -> None:
    receiver.status = 200
    with guarded_client(LOCAL, no_dns, transport=loopback) as client:
        attempt = send_once(client, f"http://127.0.0.1:{receiver.port}/", b"{}", {"webhook-id": "msg_1"})
    assert (attempt.ok, attempt.status_code, attempt.error) == (True, 200, None)
    assert attempt.latency_ms >= 0
    assert receiver.received[0][2]["webhook-id"] == "msg_1"


@pytest.mark.parametrize(("status", "error"), [(500, "HTTP 500"), (404, "HTTP 404"), (302, "redirect")])
def test_send_once_non_2xx_fails(status: int, error: str, receiver: Receiver, loopback: LoopbackOnly) -> None:
    receiver.status = status
    receiver.headers = {"Location": "http://10.0.0.1/"} if status == 302 else {}
    with guarded_client(LOCAL, no_dns, transport=loopback) as client:
        attempt = send_once(client, f"http://127.0.0.1:{receiver.port}/", b"{}", {})
    assert not attempt.ok
    assert attempt.status_code == status
    assert attempt.error is not None
    assert error in attempt.error
    assert loopback.connected == [f"http://127.0.0.1:{receiver.port}/"]


def test_send_once_refused_url_is_a_failed_attempt(loopback: LoopbackOnly) -> None:
    with guarded_client(NOTHING, no_dns, transport=loopback) as client:
        attempt = send_once(client, "http://169.254.169.254/", b"{}", {})
    assert (attempt.ok, attempt.status_code) == (False, None)
    assert attempt.error is not None
    assert attempt.error.startswith("refused: 169.254.169.254, a cloud metadata address")
    assert loopback.connected == []


def test_send_once_connection_refused(loopback: LoopbackOnly) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        with guarded_client(LOCAL, no_dns, transport=loopback) as client:
            attempt = send_once(client, f"http://127.0.0.1:{closed.getsockname()[1]}/", b"{}", {})
    finally:
        closed.close()
    assert (attempt.ok, attempt.status_code) == (False, None)
    assert attempt.error is not None
    assert attempt.error.startswith("could not connect")


def test_send_once_timeout(loopback: LoopbackOnly) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nobody ever answers
    try:
        with guarded_client(LOCAL, no_dns, timeout=0.2, transport=loopback) as client:
            attempt = send_once(client, f"http://127.0.0.1:{silent.getsockname()[1]}/", b"{}", {})
    finally:
        silent.close()
    assert (attempt.ok, attempt.status_code) == (False, None)
    assert attempt.error is not None
    assert attempt.error.startswith("timed out")
