"""Every job step a worker holds has a lease (service/jobs/leases.py); every worker reaps the
expired ones. A worker killed whole costs its steps `lease_ttl_s` + one reaper interval, not
the broker's visibility timeout.

Hooked on Celery signals, so no task changes: the main process takes the lease when the message
arrives (`task_received`: a step waiting for its ETA is covered too, and its ETA is kept), a
thread of the main process renews the leases of the messages it holds and releases each once its
message is acknowledged (done, failed, or handed back to the broker when a pool child died).
Renewing from the main process, not the pool child, means a step busy in C code never loses its
lease, and a child killed alone (the broker redelivers its message at once, with the same id)
never looks like a lost worker.

The reaper thread claims expired leases (atomically: two reapers never send a step twice) and
sends each step again by name with its arguments, to its queue. The steps are idempotent
(completion markers, compare-and-set transitions, upload lookups), so a step sent again that also
comes back from the broker later takes effect once. Past `lease_max_redeliveries` for one job,
its next lost step fails the job with `worker_lost` instead. After any Redis error a reaper
waits one lease lifetime before claiming: every worker's renewals failed during the outage,
so leases that look expired then may belong to living workers.

A job step is a task whose first argument is a job id; other tasks (webhook deliveries) have
leases of their own.

A third thread sweeps for orphans (service/jobs/orphans.py): live jobs with no step in flight at
all, whose message the broker lost before any worker held a lease on it. Workers take turns (a
Redis lock that lives one `orphan_sweep_interval_s`), so one sweep runs per interval however many
workers there are. A job must look orphaned in two looks `_SECOND_LOOK_S` apart, unchanged, before
its first step is sent again; that counts against the same redelivery cap.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from celery.signals import task_received, worker_ready, worker_shutdown
from kombu.exceptions import OperationalError

from service import metrics
from service.jobs import ErrorCode, keys
from service.jobs.chain import task_of
from service.jobs.leases import Claimed, Leases, Step
from service.jobs.orphans import Orphan, find_orphans
from service.jobs.store import TERMINAL
from service.queue import queue_of
from service.settings import Settings, get_settings
from service.store.blobs import blob_store_from_settings
from service.store.state import State
from workers.app import app
from workers.context import JobContext
from workers.runtime import Runtime

log = logging.getLogger("tuneset.leases")
_TICK_S = 0.05  # how soon a finished step's lease is released (a dict scan; Redis only then)
_SECOND_LOOK_S = 2.0  # an orphan must still be one this much later (a message between two hands)


def step_of(request: Any) -> Step | None:
    """The job step a Celery request carries, or None when it is not one."""
    args = list(request.args or [])
    if not args or not isinstance(args[0], str) or not args[0].startswith("job_"):
        return None
    eta = request.eta
    return Step(
        task_id=str(request.id),
        task=str(request.name),
        job_id=args[0],
        args=args,
        kwargs=dict(request.kwargs or {}),
        queue=(request.delivery_info or {}).get("routing_key") or None,
        eta=eta.isoformat() if isinstance(eta, datetime) else eta,
        retries=int((request.request_dict or {}).get("retries") or 0),
    )


# -- where counters go (metrics are added beside these logs) ------------------------------------


def count_lease_expired(step: Step, redeliveries: int) -> None:
    """A step's lease expired: its worker was lost (or cut off from Redis)."""
    metrics.record_lease_expired(step.task)
    log.warning(
        "lease of %s %s for job %s expired: its worker is gone (claim %d for this job)",
        step.task,
        step.task_id,
        step.job_id,
        redeliveries,
        extra={
            "job_id": step.job_id,
            "task": step.task,
            "task_id": step.task_id,
            "redeliveries": redeliveries,
        },
    )


def count_redelivery(step: Step, task_id: str) -> None:
    """A lost step was sent again (as `task_id`)."""
    metrics.record_redelivery(step.job_id, step.task)
    log.warning(
        "sent %s for job %s again as %s",
        step.task,
        step.job_id,
        task_id,
        extra={"job_id": step.job_id, "task": step.task, "task_id": task_id, "lost_task_id": step.task_id},
    )


def count_orphan(orphan: Orphan, task_id: str, redeliveries: int) -> None:
    """A live job had nothing in flight (its message was lost): its first step was sent again."""
    metrics.record_redelivery(orphan.job_id, task_of(orphan.kind), source="orphan_sweep")
    log.warning(
        "job %s (%s, %s) had no step in flight: sent %s again as %s (redelivery %d for this job)",
        orphan.job_id,
        orphan.status,
        orphan.stage,
        task_of(orphan.kind),
        task_id,
        redeliveries,
        extra={"job_id": orphan.job_id, "task_id": task_id, "redeliveries": redeliveries},
    )


def count_worker_lost(step: Step, redeliveries: int) -> None:
    """A job failed with `worker_lost`: its steps lost their worker too often."""
    log.warning(
        "job %s failed: %s lost its worker once more after %d redeliveries",
        step.job_id,
        step.task,
        redeliveries - 1,
        extra={"job_id": step.job_id, "task": step.task, "redeliveries": redeliveries},
    )


# -- the keeper: one per worker (main) process ---------------------------------------------------


class Keeper:
    """Holds this worker's leases (heartbeat thread) and reaps everyone's (reaper thread)."""

    def __init__(self, settings: Settings, sender: Celery | None = None) -> None:
        if settings.lease_heartbeat_s * 2 > settings.lease_ttl_s:
            raise ValueError("TUNESET_LEASE_HEARTBEAT_S must be at most half of TUNESET_LEASE_TTL_S")
        self.settings = settings
        self.sender = sender or app  # the worker's own app, whose broker is settings.redis_url
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.state = State.from_url(settings.redis_url, settings.job_retention_s)
        self.leases = Leases(self.state.r, settings.lease_ttl_s, counter_ttl_s=settings.job_retention_s)
        self.held: dict[str, tuple[Any, str]] = {}  # task id -> (request, owner)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.troubled = False  # Redis failed us since the last claim
        self.claims_from = 0.0  # monotonic time before which this reaper claims nothing
        self.threads = [
            threading.Thread(target=self._heartbeat, name="tuneset-lease-heartbeat", daemon=True),
            threading.Thread(target=self._reaper, name="tuneset-lease-reaper", daemon=True),
            threading.Thread(target=self._sweeper, name="tuneset-orphan-sweep", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads and release what is still held: the broker keeps those messages
        (a warm shutdown hands reserved messages back to it)."""
        self.stopping.set()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(5)
        with self.lock:
            held, self.held = self.held, {}
        for task_id, (_, owner) in held.items():
            try:
                self.leases.release(task_id, owner)
            except redis.RedisError:
                break  # they expire, and the reapers find their tasks gone or done

    def hold(self, request: Any) -> None:
        step = step_of(request)
        if step is None:
            return
        owner = f"{self.node}:{secrets.token_hex(4)}"
        try:
            self.leases.take(step, owner)
        except redis.RedisError as e:  # the broker's visibility timeout still covers the step
            self.troubled = True
            log.warning("could not take the lease of %s for job %s: %s", step.task, step.job_id, e)
            return
        with self.lock:
            self.held[step.task_id] = (request, owner)

    # -- heartbeat ---------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        next_renewal = 0.0
        while not self.stopping.wait(_TICK_S):
            try:
                self._release_finished()
                if time.monotonic() >= next_renewal:
                    self._renew()
                    next_renewal = time.monotonic() + self.settings.lease_heartbeat_s
            except redis.RedisError as e:
                self.troubled = True
                log.warning("lease heartbeat: %s", type(e).__name__)
                self.stopping.wait(1.0)  # Redis is away: no warning every tick meanwhile

    def _release_finished(self) -> None:
        with self.lock:
            finished = [(tid, owner) for tid, (req, owner) in self.held.items() if req.acknowledged]
        for task_id, owner in finished:
            self.leases.release(task_id, owner)
            self._forget(task_id, owner)

    def _renew(self) -> None:
        with self.lock:
            held = {tid: owner for tid, (_, owner) in self.held.items()}
        for task_id in self.leases.renew(held):
            log.warning(
                "lost the lease of task %s: it was claimed after missed renewals",
                task_id,
                extra={"task_id": task_id},
            )
            self._forget(task_id, held[task_id])

    def _forget(self, task_id: str, owner: str) -> None:
        with self.lock:
            if task_id in self.held and self.held[task_id][1] == owner:
                del self.held[task_id]

    # -- reaper ------------------------------------------------------------------------------

    def _reaper(self) -> None:
        interval = self.settings.lease_reaper_interval_s
        while not self.stopping.wait(interval * random.uniform(0.8, 1.2)):
            try:
                self.reap()
            except (redis.RedisError, OperationalError) as e:
                self.troubled = True
                log.warning("lease reaper: %s", type(e).__name__)
            except Exception:  # a bug in one claim must not stop the reaping
                log.exception("lease reaper failed")

    def reap(self) -> int:
        """Send again every step whose lease expired; returns how many were claimed."""
        if self.troubled:  # renewals failed everywhere meanwhile: let their owners renew first
            self.troubled = False
            self.state.r.ping()
            self.claims_from = time.monotonic() + self.settings.lease_ttl_s
        if time.monotonic() < self.claims_from:
            return 0
        claimer = f"reaper:{self.node}:{secrets.token_hex(4)}"
        claimed = self.leases.claim_expired(claimer)
        for c in claimed:
            self._redeliver(c, claimer)
        return len(claimed)

    def _redeliver(self, claimed: Claimed, claimer: str) -> None:
        step = claimed.step
        job = self.state.jobs.get(step.job_id)
        if job is not None and job["status"] not in TERMINAL:
            count_lease_expired(step, claimed.redeliveries)
            if claimed.redeliveries > self.settings.lease_max_redeliveries:
                self._fail(step, claimed.redeliveries)
            else:
                sent = self.sender.send_task(
                    step.task,
                    args=step.args,
                    kwargs=step.kwargs,
                    queue=step.queue,
                    eta=datetime.fromisoformat(step.eta) if step.eta else None,
                    retries=step.retries,
                )
                count_redelivery(step, str(sent.id))
        self.leases.release(step.task_id, claimer)

    # -- orphan sweep ------------------------------------------------------------------------

    def _sweeper(self) -> None:
        interval = self.settings.orphan_sweep_interval_s
        while not self.stopping.wait(interval * random.uniform(0.9, 1.1)):
            try:
                if self.state.r.set(keys.SWEEP_TURN, self.node, nx=True, px=int(interval * 1000)):
                    self.sweep()
            except (redis.RedisError, OperationalError) as e:
                log.warning("orphan sweep: %s", type(e).__name__)
            except Exception:  # a bug in one sweep must not stop the next
                log.exception("orphan sweep failed")

    def sweep(self, second_look_s: float = _SECOND_LOOK_S) -> int:
        """Send again the first step of every live job found with nothing in flight twice,
        `second_look_s` apart and unchanged; returns how many were sent."""
        first = find_orphans(self.state.jobs, self.leases, self.settings)
        if not first or self.stopping.wait(second_look_s):
            return 0
        second = {o.job_id: o for o in find_orphans(self.state.jobs, self.leases, self.settings) or []}
        sent = 0
        for orphan in first:
            if second.get(orphan.job_id) != orphan:
                continue  # it moved, or a step of it was seen in flight
            redeliveries = self.leases.count_redelivery(orphan.job_id)
            if redeliveries > self.settings.lease_max_redeliveries:
                self._fail_job(
                    orphan.job_id,
                    f"the job had no step in flight (its message was lost) after {redeliveries - 1} "
                    "redeliveries of its steps (TUNESET_LEASE_MAX_REDELIVERIES)",
                )
                continue
            self.state.jobs.mark_sent(orphan.job_id)
            task = task_of(orphan.kind)
            result = self.sender.send_task(task, args=[orphan.job_id], queue=queue_of(self.settings, task))
            count_orphan(orphan, str(result.id), redeliveries)
            sent += 1
        return sent

    def _fail_job(self, job_id: str, message: str) -> bool:
        """Fail the job with `worker_lost` (past the redelivery cap); False if it had ended."""
        rt = Runtime(self.settings, self.state, blob_store_from_settings(self.settings))
        return JobContext(job_id, rt).fail(ErrorCode.worker_lost, message)

    def _fail(self, step: Step, redeliveries: int) -> None:
        message = (
            f"the step {step.task} {step.args} lost its worker; this job's steps had already "
            f"been sent again {redeliveries - 1} times (TUNESET_LEASE_MAX_REDELIVERIES)"
        )
        if self._fail_job(step.job_id, message):
            count_worker_lost(step, redeliveries)


_keeper: list[Keeper] = []  # this worker's, once the main process has one
_keeper_lock = threading.Lock()


def keeper() -> Keeper:
    with _keeper_lock:
        if not _keeper or _keeper[0].node != f"{socket.gethostname()}:{os.getpid()}":
            _keeper[:] = [Keeper(get_settings())]
        return _keeper[0]


@task_received.connect  # type: ignore[untyped-decorator]
def _on_received(request: Any = None, **_: Any) -> None:
    if request is not None:
        keeper().hold(request)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _on_ready(**_: Any) -> None:
    keeper().start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: Any) -> None:
    if _keeper:
        _keeper[0].stop()
