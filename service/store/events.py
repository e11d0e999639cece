"""Job events for many concurrent followers, read with `redis.asyncio` on one event loop.

The synchronous `Jobs.events` serves scripts and tests; a Server-Sent
Events stream must not use them: each blocking XREAD holds a thread and a Redis connection for
as long as the client listens, so a few streams on a job that never ends exhaust the API.

Design (why it scales to thousands of streams): a follower first catches up on its own with
non-blocking XREADs on a small shared pool, paced by how fast its client reads; then it
registers with the feed's one poller task, which issues a single blocking
`XREAD BLOCK .. STREAMS k1 k2 ..` for every followed job at once (the smallest cursor per job)
and hands each new entry to the followers that have not seen it. So N open streams cost one
Redis connection held blocking, a bounded queue each and no thread; idle streams cost nothing
but a status check per keep-alive interval. A just-registered job joins the poll when the
current blocking read returns, so its first live event may wait up to `block_ms`. A follower
that falls more than `MAX_QUEUED` events behind is paused (left out of the poll) until its
client has read most of them, so a slow client holds bounded memory and never makes the
poller spin. When Redis fails, every follower gets the error and the poller stops; the next
follower starts a new one. `end_all_follows` ends every follower of the process (a server that
stops must not wait for streams that never end by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import redis

from service.jobs import TERMINAL
from service.jobs.keys import events_key, job_key
from service.store.redis_conn import async_client

log = logging.getLogger("tuneset.events")

COUNT = 100  # entries per stream per XREAD
MAX_QUEUED = 500  # live entries queued for one follower before it is paused
_RESUME_BELOW = 100  # a paused follower rejoins the poll once its client has read down to this


class Event(NamedTuple):
    id: str  # the stream entry id, "<ms>-<seq>"
    type: str
    data: str  # JSON


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _is_end(event: Event) -> bool:
    """A status event naming a terminal status: the job's last transition."""
    return event.type == "status" and json.loads(event.data).get("status") in TERMINAL


class FeedLost(redis.RedisError):
    """The poller lost Redis: the follower's stream ends; its client resumes from the last id."""


_END = object()  # put in a follower's queue: stop now (the server is stopping)
_feeds: weakref.WeakSet[EventFeed] = weakref.WeakSet()


def end_all_follows() -> None:
    """Ends every follow of every feed in this process, soon and cleanly; safe to call from a
    signal handler or another thread."""
    for feed in list(_feeds):
        loop = feed._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(feed._end_all)


class _Follower:
    """One open stream's place in the poll: the last entry handed to it and its queue."""

    __slots__ = ("cursor", "paused", "queue")

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        self.paused = False
        self.queue: asyncio.Queue[Event | BaseException | object] = asyncio.Queue()


class EventFeed:
    """Follows job event streams for one process; use it on one event loop (it owns a pool)."""

    def __init__(self, url: str, *, block_ms: int = 1000, max_connections: int = 32) -> None:
        self.block_ms = block_ms
        # the poller's blocking read takes one connection, everything else shares the rest and
        # waits (asynchronously) for a free one instead of opening more
        self.r = async_client(
            url,
            max_connections=max_connections,
            timeout=10,
            decode_responses=True,
            socket_timeout=max(5.0, 2 * block_ms / 1000),
            socket_connect_timeout=5,
        )
        self._followers: dict[str, set[_Follower]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ending = False
        _feeds.add(self)

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except redis.RedisError:
            return False

    async def job_tenant(self, job_id: str) -> str | None:
        """The tenant a job belongs to, None when there is no such job."""
        tenant: Any = await self.r.hget(job_key(job_id), "tenant")  # type: ignore[misc]
        return None if tenant is None else str(tenant)

    async def read(self, job_id: str, after: str) -> list[Event]:
        """Up to COUNT events after `after`, without blocking."""
        reply: Any = await self.r.xread({events_key(job_id): after}, count=COUNT)
        return [Event(i, f["type"], f["data"]) for _key, entries in reply or [] for i, f in entries]

    async def follow(
        self, job_id: str, after: str = "0", idle_s: float = 15.0
    ) -> AsyncIterator[Event | None]:
        """Every event after `after`, until the job is terminal; None after each `idle_s` without one
        (time for a keep-alive). Raises `redis.RedisError` when Redis fails: resume from the last id."""
        self._loop = asyncio.get_running_loop()
        cursor = after
        while not self._ending:  # catch up, paced by the caller
            batch = await self.read(job_id, cursor)
            for event in batch:
                yield event
            if batch:
                cursor = batch[-1].id
            if any(_is_end(e) for e in batch):
                async for event in self._tail(job_id, cursor):
                    yield event
                return
            if len(batch) < COUNT:
                break
        if self._ending:
            return
        follower = _Follower(cursor)
        self._followers.setdefault(job_id, set()).add(follower)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="tuneset-event-feed")
        try:
            while True:
                try:
                    item = await asyncio.wait_for(follower.queue.get(), idle_s)
                except TimeoutError:
                    status: Any = await self.r.hget(job_key(job_id), "status")  # type: ignore[misc]
                    if status is None or status in TERMINAL:  # deleted, or ended unannounced
                        break
                    yield None
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Event)
                if follower.paused and follower.queue.qsize() <= _RESUME_BELOW:
                    follower.paused = False
                yield item
                if _is_end(item):
                    break
            self._drop(job_id, follower)
            while not follower.queue.empty():
                queued = follower.queue.get_nowait()
                if isinstance(queued, Event):
                    yield queued
            async for event in self._tail(job_id, follower.cursor):
                yield event
        finally:
            self._drop(job_id, follower)

    async def _tail(self, job_id: str, after: str) -> AsyncIterator[Event]:
        """What is already stored after `after` (events written after the ending, if any)."""
        while True:
            batch = await self.read(job_id, after)
            for event in batch:
                yield event
            if len(batch) < COUNT:
                return
            after = batch[-1].id

    def _end_all(self) -> None:
        self._ending = True
        for followers in self._followers.values():
            for follower in followers:
                follower.queue.put_nowait(_END)

    def _drop(self, job_id: str, follower: _Follower) -> None:
        followers = self._followers.get(job_id)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._followers[job_id]

    async def _poll(self) -> None:
        """Polls while anyone follows; on any failure every follower learns of it, then it stops."""
        try:
            while self._followers:
                await self._poll_once()
        except Exception as e:
            if not isinstance(e, redis.RedisError):
                log.exception("the job event poller failed")
            for followers in self._followers.values():
                for follower in followers:
                    follower.queue.put_nowait(FeedLost(f"reading job events failed: {e!r}"))
            self._followers.clear()

    async def _poll_once(self) -> None:
        """One blocking XREAD for every followed job at once, fanned out to their followers."""
        streams: dict[str, str] = {}
        for job_id, followers in self._followers.items():
            active = [f.cursor for f in followers if not f.paused]
            if active:
                streams[events_key(job_id)] = min(active, key=_order)
        if not streams:  # everyone is paused: wait for a client to read
            await asyncio.sleep(self.block_ms / 1000)
            return
        reply: Any = await self.r.xread(streams, count=COUNT, block=self.block_ms)  # type: ignore[arg-type]
        by_key = {events_key(j): j for j in self._followers}
        for key, entries in reply or []:
            for follower in list(self._followers.get(by_key.get(key, ""), ())):
                self._hand(follower, entries)

    @staticmethod
    def _hand(follower: _Follower, entries: list[tuple[str, dict[str, str]]]) -> None:
        if follower.paused:
            return
        seen = _order(follower.cursor)
        for event_id, fields in entries:
            if _order(event_id) <= seen:
                continue
            follower.queue.put_nowait(Event(event_id, fields["type"], fields["data"]))
            follower.cursor = event_id
            if follower.queue.qsize() >= MAX_QUEUED:
                follower.paused = True
                return

    @property
    def following(self) -> int:
        """Followers registered with the poller (caught up, waiting for live events)."""
        return sum(len(f) for f in self._followers.values())

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        await self.r.aclose()
