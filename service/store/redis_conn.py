"""Redis connections from one URL: a plain Redis (`redis://`, `rediss://`) or a master found
through Sentinel (`sentinel://`), for every client the service opens — the sync state client,
the API's async event pool and the Celery broker — so an operator sets one `TUNESET_REDIS_URL`.

A Sentinel URL is kombu's own form, so the Celery documentation applies to it, with the master's
name as a query parameter: `sentinel://[:password@]host:26379[;sentinel://[:password@]host2:26379]
[/db][?master_name=mymaster]` (default `mymaster`). The password is the master's (as kombu reads
it); the sentinels themselves are reached without one. Every client asks the sentinels for the
current master when it connects and again after a connection fails, so a failover costs the
requests in flight at that moment (they answer 503, the steps retry), not a restart.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import Sentinel

DEFAULT_MASTER = "mymaster"


class SentinelTarget(msgspec.Struct, frozen=True, kw_only=True):
    """What a `sentinel://` URL names: its sentinels, the master's name, database and password."""

    sentinels: list[tuple[str, int]]
    master: str = DEFAULT_MASTER
    db: int = 0
    password: str | None = None
    username: str | None = None


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinel setup of `url`; None for a plain Redis URL. Raises ValueError when malformed."""
    if not url.startswith("sentinel://"):
        return None
    base, _, query = url.partition("?")
    master = (parse_qs(query).get("master_name") or [DEFAULT_MASTER])[0]
    sentinels: list[tuple[str, int]] = []
    db, password, username = 0, None, None
    for part in base.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError(f"not a sentinel:// address: {part!r}")
        sentinels.append((parts.hostname, parts.port or 26379))
        if parts.password:
            password, username = unquote(parts.password), unquote(parts.username or "") or None
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
    return SentinelTarget(sentinels=sentinels, master=master, db=db, password=password, username=username)


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client of the Redis `url` names (its master, for a Sentinel URL)."""
    target = sentinel_target(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel = Sentinel(target.sentinels, socket_timeout=kwargs.get("socket_timeout", 5))  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.master, db=target.db, password=target.password, username=target.username, **kwargs
    )
    return client


class _BlockingSentinelPool(AsyncSentinelPool, aredis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of failing, as
    `BlockingConnectionPool` does (the MRO gives the Sentinel address lookup and the waiting)."""


def async_client(url: str, *, max_connections: int, timeout: float, **kwargs: Any) -> aredis.Redis:
    """An asyncio client on a bounded pool: at most `max_connections`, a caller waits up to
    `timeout` seconds for one to be free."""
    target = sentinel_target(url)
    if target is None:
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **kwargs
        )
        return aredis.Redis(connection_pool=pool)
    manager = AsyncSentinel(target.sentinels, socket_timeout=kwargs.get("socket_timeout", 5))  # type: ignore[no-untyped-call]
    sentinel_pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
        target.master,
        manager,
        max_connections=max_connections,
        timeout=timeout,
        db=target.db,
        password=target.password,
        username=target.username,
        **kwargs,
    )
    return aredis.Redis(connection_pool=sentinel_pool)


def broker(url: str) -> tuple[str, dict[str, Any]]:
    """The Celery broker URL and the transport options it needs beyond ours (kombu's Sentinel
    transport takes the master's name as an option, not in the URL)."""
    target = sentinel_target(url)
    if target is None:
        return url, {}
    return url.partition("?")[0], {"master_name": target.master}
