"""Worker metrics from Celery signals: step durations, steps running, broker redeliveries.

A worker is several processes (the main one, which runs the dispatcher thread, and the prefork
pool's children, which run the steps), so the values live in prometheus_client's multiprocess
files under PROMETHEUS_MULTIPROC_DIR (an emptyDir in the pod) and the main process serves their
sum on TUNESET_WORKER_METRICS_PORT. Chosen over pushing to Redis for the API to aggregate: the
library does the summing, a scrape never touches Redis, and a pod's figures are its own (a dead
pod's vanish with it, as Prometheus expects of a target).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_shutdown, worker_ready
from prometheus_client import start_http_server
from prometheus_client.multiprocess import mark_process_dead

from service.metrics import REDELIVERIES, STEP_DURATION, STEPS_RUNNING, multiprocess_registry, step_name
from service.settings import get_settings

log = logging.getLogger("tuneset.steps")
_started: dict[str, float] = {}  # task id → perf_counter at its start, in the child running it


def _multiproc_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


@worker_init.connect  # type: ignore[untyped-decorator]
def _clear_multiproc_dir(**_: Any) -> None:
    """Values a previous run of this container left behind would be summed with ours: start from
    none (before the pool forks, so before any process of this worker wrote a value)."""
    directory = _multiproc_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _serve_metrics(**_: Any) -> None:
    """After the pool has forked, so no child inherits the listening socket."""
    settings = get_settings()
    if settings.worker_metrics_port is None:
        return
    if _multiproc_dir() is None:
        raise RuntimeError(
            "TUNESET_WORKER_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR (a writable directory)"
        )
    registry = multiprocess_registry()
    start_http_server(settings.worker_metrics_port, settings.worker_metrics_host, registry=registry)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _forget_child(pid: int | None = None, **_: Any) -> None:
    """A pool child that exits takes its 'running' gauge with it; its counters stay summed."""
    if _multiproc_dir() is not None:
        mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


@task_prerun.connect  # type: ignore[untyped-decorator]
def _step_started(task_id: str, task: Task, **_: Any) -> None:
    step = step_name(task.name)
    _started[task_id] = time.perf_counter()
    STEPS_RUNNING.labels(step).inc()
    if (task.request.delivery_info or {}).get("redelivered"):
        REDELIVERIES.labels(step, "broker").inc()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _step_ended(task_id: str, task: Task, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is None:  # its prerun ran in another process (cannot happen with prefork)
        return
    step = step_name(task.name)
    STEPS_RUNNING.labels(step).dec()
    outcome = {"SUCCESS": "success", "RETRY": "retry"}.get(state or "", "failure")
    seconds = time.perf_counter() - started
    STEP_DURATION.labels(step, outcome).observe(seconds)
    log.info("step %s: %s in %.3f s", step, outcome, seconds, extra={"step": step, "outcome": outcome})
