"""Server-Sent Events streams of job events: caps on open streams, and the response itself.

A stream holds no thread and no Redis connection of its own (`service.store.events.EventFeed`
reads for all of them), so what bounds them is memory and sockets: at most
`sse_max_streams_per_tenant` per tenant (429, so one tenant's dashboard cannot take the others'
share) and `sse_max_streams` in all (503) in one API process.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable

import redis
from litestar.response import ServerSentEvent, ServerSentEventMessage
from prometheus_client import Counter, Gauge

from service.api.errors import ApiProblem
from service.store.events import Event

log = logging.getLogger("tuneset.api")

KEEPALIVE = b": keep-alive\r\n\r\n"
RETRY_AFTER_S = 10


class StreamSlots:
    """Counts open streams per tenant and in all; used on the event loop only (no lock)."""

    def __init__(self, total: int, per_tenant: int, gauge: Gauge, rejected: Counter) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.gauge = gauge
        self.rejected = rejected
        self.open: dict[str, int] = {}

    def acquire(self, tenant: str) -> Callable[[], None]:
        """A slot for one stream of `tenant`, or the problem to answer; call the result (once or
        more) to give the slot back."""
        if self.open.get(tenant, 0) >= self.per_tenant:
            self.rejected.labels("tenant").inc()
            raise ApiProblem(
                429,
                "too-many-streams",
                f"this tenant already has {self.per_tenant} open event streams; close one or retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if sum(self.open.values()) >= self.total:
            self.rejected.labels("total").inc()
            raise ApiProblem(
                503,
                "streams-unavailable",
                f"this server has {self.total} open event streams, its limit; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.open[tenant] = self.open.get(tenant, 0) + 1
        self.gauge.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[tenant] -= 1
                if not self.open[tenant]:
                    del self.open[tenant]
                self.gauge.dec()

        return release


class _EventStream(ServerSentEvent):
    """Litestar's ServerSentEvent with our async body as is: its own wrapper sends a (here empty)
    preamble through a worker thread first, one thread hop per stream we do not need."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        super().__init__(b"")  # for its headers: no-cache, keep-alive, X-Accel-Buffering: no
        self.iterator = body


def event_stream(events: AsyncIterator[Event | None], release: Callable[[], None]) -> ServerSentEvent:
    """The events as SSE (a keep-alive comment for each None), releasing the slot when the stream
    ends: the job ended, the client left (the body is cancelled), or Redis failed (the stream ends
    cleanly and the client resumes with Last-Event-ID)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    if event is None:
                        yield KEEPALIVE
                    else:
                        yield ServerSentEventMessage(data=event.data, event=event.type, id=event.id).encode()
        except redis.RedisError as e:
            log.warning("an event stream ended early, the client resumes from its last id: %s", e)
        finally:
            release()

    stream = body()
    weakref.finalize(stream, release)  # a body never started (its client left at once) has no finally
    return _EventStream(stream)
