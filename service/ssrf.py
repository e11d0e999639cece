"""The SSRF guard: callers' URLs never reach loopback, private, link-local or cloud-metadata addresses.

Callback URLs and provider base URLs are caller input that our workers fetch from inside the
operator's network (a provider receives the tenant's training files and API key), so every address
their host resolves to must be public unless the operator allowlisted the host or network. The
check runs at registration and again for every request, and the connection goes to the checked
address itself (DNS can change between registration and use, between two requests of a long
upload, or between our lookup and the socket's own), and redirects are never followed (a public
URL may 302 to an internal one). `guarded_client` is the one client that does this, for webhook
deliveries and for the provider SDK alike.

URLs are parsed by httpx, the same parser that sends them, so the checked host is the connected host.
Numeric hosts are read the way browsers and libc's inet_aton read them (`127.1`, `0x7f.1`,
`2130706433` are 127.0.0.1) and are never handed to the resolver; ones no such parser accepts are refused.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from service.settings import Settings

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the addresses a connection could go to, as strings."""


class UrlRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HostUnresolved(UrlRefused):
    """The resolver failed (no answer, a DNS outage): refused now, but asking again later may work."""


class Target(msgspec.Struct, frozen=True, kw_only=True):
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line
    ips: tuple[str, ...]  # every address the host resolved to, all checked; connect to these only


@dataclass(frozen=True)
class Allowlist:
    """Operator exemptions: host names (or address literals) and networks the guard lets through."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Allowlist:
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.webhook_allow_networks)
        except ValueError as exc:
            raise ValueError(f"TUNESET_WEBHOOK_ALLOW_NETWORKS: {exc}") from exc
        return cls(frozenset(settings.webhook_allow_hosts), networks)

    def permits(self, host: str, ip: IP) -> bool:
        names = {_norm_name(h) for h in self.hosts}
        if _norm_name(host) in names:
            return True
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            candidates.append(ip.ipv4_mapped)  # ::ffff:a.b.c.d reaches a.b.c.d
        literals = {_parse_ip(h) for h in self.hosts}
        return any(c in literals or any(c in n for n in self.networks) for c in candidates)


def _norm_name(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def _parse_ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# -- address rules -------------------------------------------------------------------------------

_METADATA: frozenset[IP] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean ...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS pod identity
        "169.254.0.23",  # Tencent Cloud
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wireserver: a public address, hence listed
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
    )
)


def _nets(*rules: tuple[str, str]) -> list[tuple[Network, str]]:
    return [(ipaddress.ip_network(net), reason) for net, reason in rules]


_V4_RULES = _nets(
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("169.254.0.0/16", "a link-local address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_V6_RULES = _nets(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a private (unique local) address"),
    ("ff00::/8", "a multicast address"),
    ("2001::/32", "a Teredo address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
)
# IPv6 forms whose last 32 bits are an IPv4 address the packet ends up at.
_V6_EMBEDDING = _nets(
    ("::ffff:0:0/96", "an IPv4-mapped"),
    ("::ffff:0:0:0/96", "an IPv4-translated"),
    ("64:ff9b::/96", "a NAT64"),
    ("::/96", "an IPv4-compatible"),
)


def refusal(ip: IP) -> str | None:
    """Why `ip` is not a public destination (naming the rule), or None when it is."""
    if ip in _METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv4Address):
        for net, reason in _V4_RULES:
            if ip in net:
                return reason
    else:
        if ip.scope_id:
            return "a scoped (link-local) address"
        for net, reason in _V6_RULES:
            if ip in net:
                return reason
        for net, form in _V6_EMBEDDING:
            if ip in net:
                inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                why = refusal(inner)
                return f"{form} form of {inner}, {why}" if why else None
        if ip.sixtofour is not None and (why := refusal(ip.sixtofour)):
            return f"a 6to4 form of {ip.sixtofour}, {why}"
    if not ip.is_global:
        return "a special-purpose (non-public) address"
    return None


# -- URLs ----------------------------------------------------------------------------------------


def _ipv4_number(part: str) -> int | None:
    """WHATWG URL "IPv4 number parser": decimal, 0x hex, or leading-zero octal."""
    if not part:
        return None
    radix, digits = 10, string.digits
    if part[:2] in ("0x", "0X"):
        radix, digits, part = 16, string.hexdigits, part[2:]
    elif len(part) > 1 and part[0] == "0":
        radix, digits, part = 8, string.octdigits, part[1:]
    if not part:
        return 0
    return int(part, radix) if all(c in digits for c in part) else None


def _numeric_host(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a browser (or inet_aton) reads in `host`; None for a domain name.

    Raises UrlRefused for hosts that look numeric but are no valid address: resolvers disagree on them.
    """
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if not (last and last.isdigit() and last.isascii()) and _ipv4_number(last) is None:
        return None  # does not end in a number: a domain name
    numbers = [_ipv4_number(p) for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise UrlRefused(f"the host {host!r} is numeric but not a valid IPv4 address")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise UrlRefused(f"the host {host!r} is numeric but not a valid IPv4 address")
    address = values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1]))
    return ipaddress.IPv4Address(address)


def _addresses(host: str, port: int, resolve: Resolver) -> tuple[list[IP], bool]:
    """The addresses to check, and whether they came from DNS (for the wording of refusals)."""
    if ":" in host:
        if "%" in host:
            raise UrlRefused("scoped IPv6 literals are not accepted")
        literal = _parse_ip(host)
        if literal is None:
            raise UrlRefused(f"the host {host!r} is not a valid IPv6 address")
        return [literal], False
    numeric = _numeric_host(host)
    if numeric is not None:
        return [numeric], False
    try:
        found = resolve(host, port)
    except OSError as exc:
        raise HostUnresolved(f"cannot resolve {host}: {exc}") from exc
    except UnicodeError as exc:
        raise UrlRefused(f"cannot resolve {host}: {exc}") from exc
    ips: list[IP] = []
    for text in found:
        ip = _parse_ip(text)
        if ip is None:
            raise UrlRefused(f"{host} resolves to {text!r}, not an IP address")
        ips.append(ip)
    if not ips:
        raise UrlRefused(f"{host} does not resolve to any address")
    return ips, True


def check_url(url: str | httpx.URL, allow: Allowlist, resolve: Resolver = system_resolve) -> Target:
    """Where a request to `url` may connect; raises UrlRefused (with the rule broken) otherwise."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs are accepted, not {parsed.scheme or 'none'}:")
    if not parsed.raw_host:
        raise UrlRefused("the URL has no host")
    if parsed.userinfo:
        raise UrlRefused("credentials in the URL are not accepted")
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ips, resolved = _addresses(host, port, resolve)
    for ip in ips:
        if allow.permits(host, ip):
            continue
        why = refusal(ip)
        if why:
            subject = f"{host} resolves to {ip}" if resolved else f"{ip}"
            raise UrlRefused(f"{subject}, {why}, and is not allowlisted")
    return Target(
        scheme=parsed.scheme,
        host=host,
        port=port,
        path=parsed.raw_path.decode("ascii"),
        ips=tuple(str(ip) for ip in ips),
    )


# -- the guarded client --------------------------------------------------------------------------


class _PinnedTransport(httpx.BaseTransport):
    """Checks every request at send time, then connects to the checked address, never the name."""

    def __init__(self, allow: Allowlist, resolve: Resolver, inner: httpx.BaseTransport) -> None:
        self._allow, self._resolve, self._inner = allow, resolve, inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = check_url(request.url, self._allow, self._resolve)
        headers = request.headers.copy()
        headers["Host"] = request.url.netloc.decode("ascii")
        extensions = dict(request.extensions)
        if target.scheme == "https":
            # TLS verifies the certificate against the name while the socket goes to the checked IP.
            extensions["sni_hostname"] = target.host
            # A pooled connection is keyed by IP alone: never reuse one verified for another name.
            headers["Connection"] = "close"
        failure: httpx.ConnectError | None = None
        for ip in target.ips:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=ip),
                headers=headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return self._inner.handle_request(pinned)
            except httpx.ConnectError as exc:
                failure = exc  # nothing was sent; try the host's next address
        assert failure is not None  # check_url returns at least one address
        raise failure

    def close(self) -> None:
        self._inner.close()


class _NoRedirectClient(httpx.Client):
    """A 3xx is the answer: a callback that redirects failed, and its Location is never fetched."""

    def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        return super().send(request, stream=stream, auth=auth, follow_redirects=False)


def guarded_client(
    allow: Allowlist,
    resolve: Resolver = system_resolve,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An httpx client that only ever connects to addresses `check_url` accepts.

    `transport` is the inner transport that opens connections (tests pass one that allows 127.0.0.1
    only). Environment proxies are ignored (trust_env=False): a proxy would connect on our behalf.
    """
    inner = transport if transport is not None else httpx.HTTPTransport()
    return _NoRedirectClient(
        transport=_PinnedTransport(allow, resolve, inner),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
