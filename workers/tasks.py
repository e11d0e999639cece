"""Named tasks: thin wrappers over the steps, under the names `service.queue` defines.

A step that cannot finish ends its job through the one `fail` (`workers.context.JobContext`):
a time limit with `time_limit_exceeded`, a bug with `internal_error`, a provider that stays
away with `provider_unavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from kombu.exceptions import OperationalError

import workers.leases  # noqa: F401  (leases: a lost worker's steps are sent again in seconds)
from service.jobs import ErrorCode
from service.queue import (
    BUILD_TASK,
    DELIVER_TASK,
    FINALIZE_TASK,
    FINE_TUNE_POLL_TASK,
    FINE_TUNE_TASK,
    SHARD_TASK,
    UPLOAD_TASK,
)
from workers.app import app
from workers.context import JobContext
from workers.notify import Dispatcher, deliver
from workers.providers import Transient, poll_fine_tune, run_fine_tune, run_upload
from workers.runtime import reset_runtime, runtime
from workers.sharded import finalize_build, plan_build, run_shard

PROVIDER_RETRIES = 20  # with backoff capped at 5 minutes: about 1.5 hours of provider outage
_dispatchers: list[Dispatcher] = []  # the one this worker process runs, once it is ready


def _time_limit(job_id: str, what: str = "build") -> None:
    limit = runtime().settings.build_time_limit_s
    message = f"a {what} step ran longer than its {limit} s limit"
    JobContext(job_id).fail(ErrorCode.time_limit_exceeded, message)


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
            JobContext(str(args[0])).fail(
                ErrorCode.internal_error, f"a build step failed: {type(e).__name__}"
            )
            raise


def _build_step(step: Callable[..., None], job_id: str, *args: Any) -> None:
    """A build step; one that outlives its soft time limit fails the build."""
    try:
        _through_outages(step, job_id, *args)
    except SoftTimeLimitExceeded:
        _time_limit(job_id)


@app.task(name=BUILD_TASK)  # type: ignore[untyped-decorator]
def build(job_id: str) -> None:
    """Plan a build and fan it out into shard tasks."""
    _build_step(plan_build, job_id)


@app.task(name=SHARD_TASK)  # type: ignore[untyped-decorator]
def build_shard(job_id: str, index: int) -> None:
    _build_step(run_shard, job_id, index)


@app.task(name=FINALIZE_TASK)  # type: ignore[untyped-decorator]
def build_finalize(job_id: str) -> None:
    _build_step(finalize_build, job_id)


def _provider_step(task: Task, step: Callable[..., None], job_id: str) -> None:
    """A provider step, retried later while the provider is unreachable or overloaded."""
    try:
        _through_outages(step, job_id)
    except SoftTimeLimitExceeded:
        _time_limit(job_id, "provider")
    except Transient as e:
        if task.request.retries >= PROVIDER_RETRIES:
            JobContext(job_id).fail(ErrorCode.provider_unavailable, f"the provider stayed unavailable ({e})")
            return
        raise task.retry(
            countdown=min(300, 2 ** (task.request.retries + 1)), max_retries=PROVIDER_RETRIES
        ) from e


@app.task(name=UPLOAD_TASK, bind=True)  # type: ignore[untyped-decorator]
def upload(self: Task, job_id: str) -> None:
    """Send a succeeded build's files to the provider, once."""
    _provider_step(self, run_upload, job_id)


@app.task(name=FINE_TUNE_TASK, bind=True)  # type: ignore[untyped-decorator]
def fine_tune(self: Task, job_id: str) -> None:
    """Create the provider fine-tuning job (once) and start following it."""
    _provider_step(self, run_fine_tune, job_id)


@app.task(name=FINE_TUNE_POLL_TASK, bind=True)  # type: ignore[untyped-decorator]
def fine_tune_poll(self: Task, job_id: str, n: int | None = None) -> None:
    """Read the provider job. The polling chain (n given) polls again with backoff until the job
    ends; a poll asked for by a provider webhook (n None) reads once."""
    ended: list[bool] = []
    _provider_step(self, lambda j: ended.append(poll_fine_tune(j)), job_id)
    if n is not None and not (ended and ended[0]):
        countdown = min(runtime().settings.provider_poll_interval_s, 0.5 * 2**n)
        self.apply_async(args=[job_id, n + 1], countdown=countdown)


@app.task(name=DELIVER_TASK)  # type: ignore[untyped-decorator]
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


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_runtime(**_: Any) -> None:
    """A pool child builds its own runtime: its parent's Redis pool and blob store stay its parent's."""
    reset_runtime()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_dispatcher(**_: Any) -> None:
    dispatcher = Dispatcher()
    dispatcher.start()
    _dispatchers.append(dispatcher)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_dispatcher(**_: Any) -> None:
    for dispatcher in _dispatchers:
        dispatcher.stop()
