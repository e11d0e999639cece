"""Leases on job steps, against a real redis-server: held while renewed, claimed once when not,
and a claimed step sent again by name to its queue, or its job failed past the cap."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import msgspec
import pytest
import redis

from service.jobs import BuildSpec
from service.jobs.leases import Leases, Step
from service.settings import Settings
from service.store.state import State
from workers.app import make_app
from workers.leases import Keeper


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    return client


def _step(n: int, job: str = "job_1") -> Step:
    return Step(task_id=f"t{n}", task="tuneset.build_shard", job_id=job, args=[job, n], queue="tuneset.cpu")


def test_a_renewed_lease_stays_and_a_released_one_goes(r: redis.Redis) -> None:
    leases = Leases(r, ttl_s=0.3)
    leases.take(_step(1), "w1")
    for _ in range(4):  # four lifetimes, renewed at each half
        time.sleep(0.15)
        assert leases.renew({"t1": "w1"}) == []
    assert leases.claim_expired("reaper") == []
    assert [h.owner for h in leases.held()] == ["w1"]
    assert not leases.release("t1", "w2")  # not w2's
    assert leases.release("t1", "w1")
    assert leases.held() == []
    assert leases.renew({"t1": "w1"}) == []  # gone: nothing to renew, nothing lost


def test_an_expired_lease_is_claimed_once_and_its_owner_cannot_take_it_back(r: redis.Redis) -> None:
    leases = Leases(r, ttl_s=0.2)
    leases.take(_step(1), "w1")
    time.sleep(0.25)
    first = leases.claim_expired("reaper-a")
    assert [(c.step, c.redeliveries) for c in first] == [(_step(1), 1)]
    assert leases.claim_expired("reaper-b") == []  # the claim holds it for a lifetime
    assert leases.renew({"t1": "w1"}) == ["t1"]  # the old owner learns it lost it
    assert not leases.release("t1", "w1")
    time.sleep(0.25)  # the claimer died before sending it: it expires again
    again = leases.claim_expired("reaper-b")
    assert [c.redeliveries for c in again] == [2]
    assert leases.redeliveries("job_1") == 2


def test_concurrent_reapers_never_claim_the_same_step(r: redis.Redis, redis_url: str) -> None:
    leases = Leases(r, ttl_s=0.1)
    for n in range(200):
        leases.take(_step(n, job=f"job_{n % 7}"), "dead")
    time.sleep(0.15)
    got: list[str] = []
    lock = threading.Lock()

    def reap(name: str) -> None:
        mine = Leases(redis.Redis.from_url(redis_url), 5)  # bytes replies: both kinds of client work
        while claimed := mine.claim_expired(name, limit=7):
            with lock:
                got.extend(c.step.task_id for c in claimed)

    threads = [threading.Thread(target=reap, args=(f"reaper-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"t{n}" for n in range(200))  # each exactly once
    assert sum(leases.redeliveries(f"job_{j}") for j in range(7)) == 200


def _settings(redis_url: str, tmp_path: Path, **changes: float) -> Settings:
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        lease_ttl_s=changes.get("ttl", 0.2),
        lease_heartbeat_s=0.05,
        lease_max_redeliveries=int(changes.get("cap", 1)),
    )


def _queued(r: redis.Redis, queue: str) -> list[dict[str, object]]:
    """The task messages waiting in a queue (kombu's Redis list), oldest first."""
    out = []
    for raw in reversed(r.lrange(queue, 0, -1)):  # type: ignore[arg-type]
        message = json.loads(raw)
        out.append({"task": message["headers"]["task"], "id": message["headers"]["id"]})
    return out


def test_the_reaper_sends_a_lost_step_again_to_its_queue_then_fails_the_job_past_the_cap(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = _settings(redis_url, tmp_path, cap=1)
    state = State.from_url(redis_url)
    job = state.jobs.create("acme", BuildSpec(dataset_id="ds_1"))
    state.jobs.start(job["id"], "shards")
    keeper = Keeper(settings, make_app(settings))
    lost = Step(task_id="lost-1", task="tuneset.build_shard", job_id=job["id"], args=[job["id"], 3])
    keeper.leases.take(msgspec.structs.replace(lost, queue="tuneset.io"), "dead-worker")
    time.sleep(0.25)
    assert keeper.reap() == 1
    sent = _queued(r, "tuneset.io")
    assert [m["task"] for m in sent] == ["tuneset.build_shard"]
    assert sent[0]["id"] != "lost-1"  # a new message; the old one may still come back from the broker
    assert keeper.leases.held() == []  # the broker has it now
    assert (state.jobs.get(job["id"]) or {})["status"] == "running"

    keeper.leases.take(lost, "dead-again")  # the step it became lost its worker too
    time.sleep(0.25)
    assert keeper.reap() == 1
    assert len(_queued(r, "tuneset.io")) == 1  # not sent again: the cap was reached
    done = state.jobs.get(job["id"]) or {}
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"
    assert "tuneset.build_shard" in done["error"]["message"]
    statuses = [json.loads(d)["status"] for _, kind, d in state.jobs.events(job["id"]) if kind == "status"]
    assert statuses == ["queued", "running", "failed"]


def test_the_reaper_drops_the_lease_of_a_finished_job_and_waits_after_redis_trouble(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = _settings(redis_url, tmp_path, ttl=0.3)
    state = State.from_url(redis_url)
    job = state.jobs.create("acme", BuildSpec(dataset_id="ds_1"))
    state.jobs.cancel(job["id"])
    keeper = Keeper(settings, make_app(settings))
    keeper.leases.take(_step(1, job=job["id"]), "dead-worker")
    keeper.troubled = True  # as after a failed renewal: owners get one lifetime to renew first
    time.sleep(0.35)
    assert keeper.reap() == 0
    time.sleep(0.35)
    assert keeper.reap() == 1
    assert keeper.leases.held() == []
    assert _queued(r, "tuneset.cpu") == []  # nothing left to do for a cancelled job
    assert keeper.leases.redeliveries(job["id"]) == 1
