"""The async event reader behind SSE (service.store.events) on the session's real redis-server:
followers at different places of one job each get exactly their events, in order; a client that
does not read is paused at a bounded backlog and still gets everything once it reads."""

from __future__ import annotations

import asyncio

from service.jobs import decode_spec
from service.store import events as feed_module
from service.store.events import Event, EventFeed
from service.store.state import State


def test_followers_get_exactly_their_events_and_a_slow_one_is_bounded(redis_url: str) -> None:
    state = State.from_url(redis_url)
    job = state.jobs.create("acme", decode_spec("build", {"dataset_id": "ds_x"}))["id"]
    first = state.jobs.event(job, "log", {"n": 0})
    total = 3 * feed_module.MAX_QUEUED

    async def scenario() -> None:
        feed = EventFeed(redis_url, block_ms=200)
        try:
            from_start = feed.follow(job, "0", idle_s=5)
            from_first = feed.follow(job, first, idle_s=5)
            # both catch up on what is stored, then wait on the shared poller
            caught_up = [await anext(from_start) for _ in range(2)]
            assert [e.type for e in caught_up if e] == ["status", "log"]
            waiting = [asyncio.ensure_future(anext(f)) for f in (from_start, from_first)]
            await asyncio.sleep(0.3)
            assert feed.following == 2
            assert not any(w.done() for w in waiting)

            await asyncio.to_thread(
                lambda: [state.jobs.event(job, "log", {"n": n}) for n in range(1, total + 1)]
            )
            got_start: list[Event | None] = [await waiting[0]]
            got_first: list[Event | None] = [await waiting[1]]
            while len(got_first) < total:
                got_first.append(await anext(from_first))
            await asyncio.sleep(0.5)  # from_start read nothing more meanwhile: paused, not growing
            (slow,) = (f for f in feed._followers[job] if f.queue.qsize())
            assert slow.paused
            assert slow.queue.qsize() <= feed_module.MAX_QUEUED + feed_module.COUNT
            got_start += [await anext(from_start) for _ in range(total - 1)]
            for got in (got_first, got_start):
                assert [e.data for e in got if e] == [f'{{"n": {n}}}' for n in range(1, total + 1)]

            await asyncio.to_thread(state.jobs.request_cancel, job)
            for follower in (from_start, from_first):
                ending = [e async for e in follower]
                assert [e.type for e in ending if e] == ["status"]
            assert feed.following == 0
        finally:
            await feed.aclose()

    asyncio.run(scenario())
