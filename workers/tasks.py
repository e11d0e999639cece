"""Named tasks: thin wrappers over functions that tests call directly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_ready, worker_shutdown
from kombu.exceptions import OperationalError

import workers.leases  # noqa: F401  (leases: a lost worker's steps are sent again in seconds)
from service.settings import get_settings
from service.store.state import State
from workers.app import app
from workers.notify import Dispatcher, deliver
from workers.providers import Transient, poll_fine_tune, run_fine_tune, run_upload
from workers.sharded import finalize_build, plan_build, run_shard

PROVIDER_RETRIES = 20  # with backoff capped at 5 minutes: about 1.5 hours of provider outage
_dispatchers: list[Dispatcher] = []  # the one this worker process runs, once it is ready


def _fail(job_id: str, code: str, message: str) -> None:
    settings = get_settings()
    State.from_url(settings.redis_url).transition(
        job_id, {"queued", "running"}, "failed", stage="failed", error={"code": code, "message": message}
    )


def _time_limit(job_id: str) -> None:
    _fail(
        job_id,
        "time_limit_exceeded",
        f"a build step ran longer than its {get_settings().build_time_limit_s} s limit",
    )


def _through_outages(step: Callable[..., None], *args: Any, patience_s: float = 180.0) -> None:
    """Run a build step, and run it again while Redis (state or broker) is unreachable.

    Every step is idempotent (markers, compare-and-set transitions), so redoing it after a Redis
    restart is safe; without this, a step that met the outage would fail and its message, acked,
    would be lost (shared/reliability.md)."""
    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            step(*args)
            return
        except (redis.RedisError, OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except (SoftTimeLimitExceeded, Transient):  # the task retries these later, its own way
            raise
        except Exception as e:  # a bug must end the job, not leave it running forever
            _fail(str(args[0]), "internal_error", f"a build step failed: {type(e).__name__}")
            raise


@app.task(name="tuneset.build")  # type: ignore[untyped-decorator]
def build(job_id: str) -> None:
    """Plan a build and fan it out into shard tasks."""
    try:
        _through_outages(plan_build, job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name="tuneset.build_shard")  # type: ignore[untyped-decorator]
def build_shard(job_id: str, index: int) -> None:
    try:
        _through_outages(run_shard, job_id, index)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name="tuneset.build_finalize")  # type: ignore[untyped-decorator]
def build_finalize(job_id: str) -> None:
    try:
        _through_outages(finalize_build, job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


def _provider_step(task: Task, step: Callable[..., None], job_id: str) -> None:
    """A provider step, retried later while the provider is unreachable or overloaded."""
    try:
        _through_outages(step, job_id)
    except SoftTimeLimitExceeded:
        _fail(
            job_id,
            "time_limit_exceeded",
            f"a provider step ran longer than {get_settings().build_time_limit_s} s",
        )
    except Transient as e:
        if task.request.retries >= PROVIDER_RETRIES:
            _fail(job_id, "provider_unavailable", f"the provider stayed unavailable ({e})")
            return
        raise task.retry(
            countdown=min(300, 2 ** (task.request.retries + 1)), max_retries=PROVIDER_RETRIES
        ) from e


@app.task(name="tuneset.upload", bind=True)  # type: ignore[untyped-decorator]
def upload(self: Task, job_id: str) -> None:
    """Send a succeeded build's files to the provider, once."""
    _provider_step(self, run_upload, job_id)


@app.task(name="tuneset.fine_tune", bind=True)  # type: ignore[untyped-decorator]
def fine_tune(self: Task, job_id: str) -> None:
    """Create the provider fine-tuning job (once) and start following it."""
    _provider_step(self, run_fine_tune, job_id)


@app.task(name="tuneset.fine_tune_poll", bind=True)  # type: ignore[untyped-decorator]
def fine_tune_poll(self: Task, job_id: str, n: int | None = None) -> None:
    """Read the provider job. The polling chain (n given) polls again with backoff until the job
    ends; a poll asked for by a provider webhook (n None) reads once."""
    ended: list[bool] = []
    _provider_step(self, lambda j: ended.append(poll_fine_tune(j)), job_id)
    if n is not None and not (ended and ended[0]):
        countdown = min(get_settings().provider_poll_interval_s, 0.5 * 2**n)
        self.apply_async(args=[job_id, n + 1], countdown=countdown)


@app.task(name="tuneset.deliver")  # type: ignore[untyped-decorator]
def deliver_webhook(delivery_id: str) -> None:
    """One attempt at a webhook delivery."""
    deliver(delivery_id)


@worker_init.connect  # type: ignore[untyped-decorator]
def _warm_tokenizer(**_: Any) -> None:
    """Load the default model's tokenizer once in the main process, before the pool forks: every
    pool child then shares it instead of spending ~0.4 s loading it on its first task."""
    from service.core.encodings import get_encoding
    from service.core.models import load_table
    from service.core.pipeline import DEFAULT_MODEL

    get_encoding(load_table().resolve(DEFAULT_MODEL).encoding).encode_ordinary("warm up")


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_dispatcher(**_: Any) -> None:
    dispatcher = Dispatcher()
    dispatcher.start()
    _dispatchers.append(dispatcher)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_dispatcher(**_: Any) -> None:
    for dispatcher in _dispatchers:
        dispatcher.stop()
