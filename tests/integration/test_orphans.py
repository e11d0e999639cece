"""The orphan sweep's finding, against a real Redis and real broker messages: a live job is an
orphan only when nothing of it is in flight — no lease, no message waiting in a queue, none held
unacknowledged — and a job that ended leaves the index."""

from __future__ import annotations

from typing import Any

from service.core.pipeline import Recipe
from service.jobs import BuildSpec
from service.jobs.leases import Leases, Step
from service.jobs.orphans import find_orphans
from service.queue import BUILD_TASK, UNACKED, enqueue
from service.settings import Settings
from service.store.state import State


def _live_build(state: State, settings: Settings) -> str:
    job = state.jobs.create("acme", BuildSpec(dataset_id="ds_x", recipe=Recipe(model="gpt-4o-mini")))
    state.jobs.mark_sent(job["id"])
    enqueue(settings, BUILD_TASK, [job["id"]])  # nobody consumes: it waits in the queue
    return str(job["id"])


def test_a_job_is_an_orphan_only_with_nothing_in_flight(settings: Settings) -> None:
    settings = settings.model_copy(update={"orphan_after_s": 0.0})
    state = State.from_url(settings.redis_url)
    leases = Leases(state.r, ttl_s=10)
    job_id = _live_build(state, settings)

    assert find_orphans(state.jobs, leases, settings) == []  # its message waits in the queue

    message: Any = state.r.rpop(settings.cpu_queue)  # a worker popped it ...
    assert isinstance(message, str)
    state.r.hset(UNACKED, "tag-1", message)  # ... and recorded it as unacknowledged
    assert find_orphans(state.jobs, leases, settings) == []

    state.r.delete(UNACKED)  # the record never made it (Redis died between the two commands)
    orphans = find_orphans(state.jobs, leases, settings)
    assert orphans is not None
    assert [(o.job_id, o.kind, o.status) for o in orphans] == [(job_id, "build", "queued")]

    leases.take(Step(task_id="t-1", task=BUILD_TASK, job_id=job_id, args=[job_id]), "w-1")
    assert find_orphans(state.jobs, leases, settings) == []  # a worker holds a step of it
    leases.release("t-1", "w-1")
    assert [o.job_id for o in find_orphans(state.jobs, leases, settings) or []] == [job_id]

    assert state.jobs.request_cancel(job_id)  # ended: it leaves the index
    assert state.jobs.unseen_since(0, 10) == []
    assert find_orphans(state.jobs, leases, settings) == []


def test_a_job_seen_in_flight_is_not_looked_at_again_until_it_is_old(settings: Settings) -> None:
    settings = settings.model_copy(update={"orphan_after_s": 3600.0})
    state = State.from_url(settings.redis_url)
    job_id = _live_build(state, settings)
    state.r.delete(settings.cpu_queue)
    assert state.jobs.unseen_since(0, 10) == [job_id]
    assert find_orphans(state.jobs, Leases(state.r, ttl_s=10), settings) == []  # too recent to look at


def test_a_deep_backlog_is_not_scanned(settings: Settings) -> None:
    settings = settings.model_copy(update={"orphan_after_s": 0.0})
    state = State.from_url(settings.redis_url)
    _live_build(state, settings)
    _live_build(state, settings)
    state.r.rpop(settings.cpu_queue)  # one of the two is an orphan, but there is too much to read
    assert find_orphans(state.jobs, Leases(state.r, ttl_s=10), settings, scan_limit=0) is None
