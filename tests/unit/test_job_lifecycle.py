"""The job state machine against a real redis-server: named operations, each one atomic.

Every status change is a compare-and-set in Lua, so racing workers and cancels agree: a job
reaches exactly one terminal state, announces it once and expires with its events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from service.jobs import (
    BuildSpec,
    Callback,
    ErrorCode,
    FineTuneSpec,
    Jobs,
    UploadSpec,
    decode_spec,
    spec_of,
)
from service.jobs import keys as job_keys
from service.jobs.chain import after_ending, links, plan_followers, task_of
from service.queue import BUILD_TASK, FINE_TUNE_TASK, LANES, UPLOAD_TASK, queue_of, routes
from service.settings import Settings
from service.store.state import State


@pytest.fixture
def jobs(redis_url: str) -> Iterator[Jobs]:
    state = State.from_url(redis_url, job_retention_s=600)
    state.r.flushdb()
    yield state.jobs
    state.r.close()


def build(jobs: Jobs, **spec: object) -> str:
    return str(jobs.create("acme", decode_spec("build", {"dataset_id": "ds_x", **spec}))["id"])


def statuses(jobs: Jobs, job_id: str) -> list[str]:
    return [json.loads(d)["status"] for _, kind, d in jobs.events(job_id) if kind == "status"]


def test_a_job_moves_only_along_the_machine(jobs: Jobs) -> None:
    job_id = build(jobs)
    assert not jobs.succeed(job_id, {"x": 1})  # a queued job cannot succeed before it starts
    assert jobs.start(job_id, "planning")
    assert not jobs.start(job_id, "planning")  # a second worker does not start it again
    running = jobs.get(job_id)
    assert running is not None
    assert (running["status"], running["stage"]) == ("running", "planning")
    assert running["started_at"] is not None
    assert running["finished_at"] is None
    jobs.progress(job_id, "shards", 3, 10)
    assert jobs.succeed(job_id, {"examples": 10})
    assert not jobs.fail(job_id, ErrorCode.internal_error, "too late")
    assert not jobs.cancel(job_id)
    done = jobs.get(job_id)
    assert done is not None
    assert (done["status"], done["stage"], done["result"], done["error"]) == (
        "succeeded",
        "done",
        {"examples": 10},
        None,
    )
    assert (done["done"], done["total"]) == (3, 10)
    assert statuses(jobs, job_id) == ["queued", "running", "succeeded"]


def test_fail_records_the_code_and_message_and_reaches_a_queued_job_too(jobs: Jobs) -> None:
    job_id = build(jobs)
    assert jobs.fail(job_id, ErrorCode.enqueue_failed, "the broker is unreachable", result={"shards": 0})
    failed = jobs.get(job_id)
    assert failed is not None
    assert (failed["status"], failed["stage"]) == ("failed", "failed")
    assert failed["error"] == {"code": "enqueue_failed", "message": "the broker is unreachable"}
    assert failed["result"] == {"shards": 0}
    [ending] = [json.loads(d) for _, kind, d in jobs.events(job_id) if kind == "status"][-1:]
    assert ending == {
        "status": "failed",
        "error": {"code": "enqueue_failed", "message": "the broker is unreachable"},
    }


def test_request_cancel_ends_a_queued_job_and_flags_a_running_one(jobs: Jobs) -> None:
    queued, running = build(jobs), build(jobs)
    jobs.start(running, "planning")
    assert jobs.request_cancel(queued)
    assert not jobs.request_cancel(running)  # its worker stops it at its next check
    assert jobs.cancel_requested(running)
    assert (jobs.get(running) or {})["status"] == "running"
    assert jobs.cancel(running)
    assert [(jobs.get(j) or {}).get("status") for j in (queued, running)] == ["cancelled", "cancelled"]


def test_an_ending_expires_the_job_and_announces_it_once(jobs: Jobs) -> None:
    job_id = build(jobs)
    r = jobs.r
    assert r.ttl(job_keys.job_key(job_id)) == -1  # queued: kept
    jobs.start(job_id, "planning")
    jobs.complete_shard(job_id, 0, 5)
    assert r.ttl(job_keys.job_key(job_id)) == -1  # running: kept
    jobs.fail(job_id, ErrorCode.internal_error, "boom")
    for key in (job_keys.job_key(job_id), job_keys.events_key(job_id), job_keys.shards_done_key(job_id)):
        assert 0 < int(r.ttl(key)) <= 600  # type: ignore[arg-type]
    assert jobs.take_notification(0.1) == job_id
    assert jobs.take_notification(0.1) is None
    assert jobs.requeue_unfinished_notifications() == 1  # taken, not yet announced: goes back
    assert jobs.take_notification(0.1) == job_id
    jobs.notified(job_id)
    assert jobs.requeue_unfinished_notifications() == 0


def test_a_shard_counts_once_however_often_it_completes(jobs: Jobs) -> None:
    job_id = build(jobs)
    assert [jobs.complete_shard(job_id, i, 10) for i in (0, 1, 0, 1)] == [1, 2, 2, 2]
    assert (jobs.get(job_id) or {})["done"] == 20
    assert [jobs.count_shard_attempt(job_id, 0) for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("rounds", [200])
def test_concurrent_cancel_and_succeed_reach_exactly_one_terminal_state(redis_url: str, rounds: int) -> None:
    """Two workers (their own connections) race to end each job; exactly one wins each time,
    and the job announces and records one ending."""
    setup = State.from_url(redis_url).jobs
    setup.r.flushdb()
    ids = [build(setup) for _ in range(rounds)]
    for job_id in ids:
        setup.start(job_id, "finalizing")
        setup.request_cancel(job_id)
    wins: dict[str, list[str]] = {job_id: [] for job_id in ids}
    lock = threading.Lock()

    def race(name: str, end: object) -> None:
        jobs = State.from_url(redis_url).jobs
        for job_id in ids:
            barrier.wait()
            if end(jobs, job_id):  # type: ignore[operator]
                with lock:
                    wins[job_id].append(name)

    barrier = threading.Barrier(3)
    threads = [
        threading.Thread(target=race, args=("succeed", lambda j, i: j.succeed(i, {"ok": True}))),
        threading.Thread(target=race, args=("cancel", lambda j, i: j.cancel(i))),
        threading.Thread(
            target=race, args=("fail", lambda j, i: j.fail(i, ErrorCode.time_limit_exceeded, "slow"))
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(len(winners) == 1 for winners in wins.values()), wins
    for job_id in ids:
        job = setup.get(job_id) or {}
        assert (
            job["status"]
            == {"succeed": "succeeded", "cancel": "cancelled", "fail": "failed"}[wins[job_id][0]]
        )
        assert statuses(setup, job_id) == ["queued", "running", job["status"]]
    announced = setup.r.lrange(job_keys.NOTIFY, 0, -1)
    assert sorted(announced) == sorted(ids)  # type: ignore[arg-type]
    winners = {w[0] for w in wins.values()}
    print(
        f"\n{rounds} races: wins by operation { ({n: sum(w == [n] for w in wins.values()) for n in winners}) }"
    )


def test_a_spec_is_stored_typed_and_read_back_as_its_kind(jobs: Jobs) -> None:
    callback = Callback(url="https://example.com/hooks", secret="encrypted")
    spec = BuildSpec(dataset_id="ds_x", shard_size=7, callback=callback)
    job = jobs.create("acme", spec)
    assert job["kind"] == "build"
    read = spec_of(jobs.get(job["id"]) or {})
    assert read == spec
    with pytest.raises(Exception, match="dataset_id"):
        decode_spec("build", {})


def test_the_chain_starts_the_next_job_or_ends_it_the_same_way(jobs: Jobs) -> None:
    build_id = "job_build"
    upload_id, fine_tune_id = plan_followers(jobs, "acme", build_id, "prov_1", "fake", {"model": "m"}, None)
    upload, fine_tune = spec_of(jobs.get(upload_id) or {}), spec_of(jobs.get(fine_tune_id or "") or {})
    assert isinstance(upload, UploadSpec)
    assert isinstance(fine_tune, FineTuneSpec)
    assert (upload.fine_tune_job, fine_tune.upload_job) == (fine_tune_id, upload_id)
    assert links(fine_tune) == {"build_job_id": build_id, "upload_job_id": upload_id}
    assert [(jobs.get(j) or {}).get("stage") for j in (upload_id, fine_tune_id or "")] == [
        "waiting",
        "waiting",
    ]

    first = jobs.create("acme", BuildSpec(dataset_id="ds_x", upload_job=upload_id))
    jobs.start(first["id"], "planning")
    jobs.succeed(first["id"], {})
    assert after_ending(jobs, jobs.get(first["id"]) or {}) == (UPLOAD_TASK, upload_id)

    jobs.start(upload_id, "uploading")
    jobs.cancel(upload_id)
    assert after_ending(jobs, jobs.get(upload_id) or {}) is None
    ended = jobs.get(fine_tune_id or "") or {}
    assert (ended["status"], ended["error"]["code"]) == ("cancelled", "upload_cancelled")

    other_upload, _ = plan_followers(jobs, "acme", "job_b2", "prov_1", "fake", None, None)
    failed = jobs.create("acme", BuildSpec(dataset_id="ds_x", upload_job=other_upload))
    jobs.fail(failed["id"], ErrorCode.validation_failed, "see report.json")
    assert after_ending(jobs, jobs.get(failed["id"]) or {}) is None
    ended = jobs.get(other_upload) or {}
    assert (ended["status"], ended["error"]["code"]) == ("failed", "build_failed")
    assert [task_of(k) for k in ("build", "upload", "fine_tune")] == [BUILD_TASK, UPLOAD_TASK, FINE_TUNE_TASK]


def test_every_error_code_is_documented_and_the_pinned_ones_exist() -> None:
    assert all(code.doc for code in ErrorCode)
    pinned = {"internal_error", "time_limit_exceeded", "enqueue_failed", "validation_failed", "url_refused"}
    pinned |= {"profile_changed", "upload_failed", "provider_unavailable", "too_many_attempts"}
    assert pinned <= {code.value for code in ErrorCode}
    for kind in ("build", "upload"):
        for status in ("failed", "cancelled"):
            assert ErrorCode(f"{kind}_{status}").doc


def test_every_task_has_a_queue_and_routes_there() -> None:
    settings = Settings(cpu_queue="c", io_queue="i")
    assert routes(settings) == {task: {"queue": queue_of(settings, task)} for task in LANES}
    assert {queue_of(settings, t) for t in (BUILD_TASK, UPLOAD_TASK)} == {"c", "i"}
