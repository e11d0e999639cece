"""Announcing job endings: webhook deliveries, the next job of a build → upload → fine-tune chain,
and the delivery attempts themselves.

A job's ending pushes its id onto a Redis list in the same atomic step (`service.jobs.Jobs`).
The dispatcher thread of every worker takes ids from it (kept aside until
done, put back if a worker died mid-way), and for each:
- creates one delivery per matching subscription and per job callback, with ids derived from the
  job and the target, so announcing twice sends once;
- starts the job that waited for this one (upload after a build, fine-tune after an upload) or,
  when this one failed or was cancelled, ends the waiting one the same way (`service.jobs.chain`).
It also claims due deliveries and enqueues one `tuneset.deliver` task each. The delivery task signs
(the same `webhook-id` on every attempt, a fresh timestamp), POSTs through the SSRF-guarded client,
records the attempt and schedules the next one with backoff and jitter, or gives up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from typing import Any

import redis
from kombu.exceptions import OperationalError

from service.jobs import TERMINAL, Jobs, chain, spec_of
from service.jobs.chain import after_ending, links
from service.queue import DELIVER_TASK, enqueue
from service.settings import Settings
from service.ssrf import Allowlist, guarded_client
from service.store.secrets import MissingSecretKey, SecretBox
from service.store.webhooks import WebhookStore
from service.times import rfc3339
from service.webhooks.schedule import next_delay
from service.webhooks.send import send_once
from service.webhooks.signing import sign
from workers.runtime import Runtime, runtime

log = logging.getLogger("tuneset.notify")
_rng = random.SystemRandom()


def _webhooks(settings: Settings, r: redis.Redis) -> WebhookStore | None:
    """The webhook store, or None without a secret key (nothing can have been registered then)."""
    try:
        box = SecretBox.from_settings(settings)
    except MissingSecretKey:
        return None  # nothing can have been registered without a key
    return WebhookStore(r, box, settings.webhook_disable_after)


def payload_of(job: dict[str, Any]) -> dict[str, Any]:
    """What the caller receives: `{type, timestamp, job_id, kind, status, result | error, ...}`."""
    finished = job.get("finished_at") or time.time()
    out: dict[str, Any] = {
        "type": f"{job['kind']}.{job['status']}",
        "timestamp": rfc3339(finished),
        "job_id": job["id"],
        "kind": job["kind"],
        "status": job["status"],
    }
    out.update(links(spec_of(job)))
    if job.get("error"):
        out["error"] = job["error"]
    else:
        out["result"] = job.get("result")
    return out


def _delivery_id(job: dict[str, Any], target: str) -> str:
    """Time-ordered like every id here, and the same however often the ending is announced."""
    finished_ms = int((job.get("finished_at") or 0) * 1000)
    digest = hashlib.sha256(f"{job['id']}|{job['status']}|{target}".encode()).hexdigest()[:16]
    return f"msg_{finished_ms:012x}{digest}"


def announce(settings: Settings, jobs: Jobs, store: WebhookStore | None, job_id: str) -> None:
    """Start or end the job's follower, and create its deliveries (none without a secret key:
    then nothing can have been registered)."""
    job = jobs.get(job_id)
    if job is None or job["status"] not in TERMINAL:
        return
    start = after_ending(jobs, job)
    if start is not None:
        task, follower = start
        chain.send(settings, jobs, task, follower)  # a live job from now on, for the orphan sweep
    if store is None:
        return
    event_type = f"{job['kind']}.{job['status']}"
    body = json.dumps(payload_of(job), separators=(",", ":")).encode()
    tenant = job["tenant"]
    for sub in store.subscriptions_for(tenant, event_type):
        store.create_delivery(
            tenant, sub.id, sub.url, None, event_type, body, delivery_id=_delivery_id(job, sub.id)
        )
    callback = spec_of(job).callback
    if callback is not None:
        secret = store.box.decrypt(callback.secret)
        store.create_delivery(
            tenant, None, callback.url, secret, event_type, body, delivery_id=_delivery_id(job, "callback")
        )


def deliver(delivery_id: str) -> None:
    """One attempt at a pending delivery; a delivered or failed one is left alone."""
    rt = runtime()
    settings = rt.settings
    store = _webhooks(settings, rt.state.r)
    delivery = store.delivery(delivery_id) if store is not None else None
    if store is None or delivery is None or delivery.status != "pending":
        return
    body = store.delivery_payload(delivery_id)
    headers = sign(store.delivery_secret(delivery_id), delivery_id, int(time.time()), body)
    with guarded_client(Allowlist.from_settings(settings), timeout=settings.webhook_timeout_s) as client:
        attempt = send_once(client, delivery.url, body, headers)
    delay = (
        None
        if attempt.ok
        else next_delay(len(delivery.attempts) + 2, settings.webhook_retry_schedule_s, _rng)
    )
    done = store.record_attempt(delivery_id, attempt, None if delay is None else time.time() + delay)
    log.info("webhook %s to %s: %s", delivery_id, delivery.url, done.status if attempt.ok else attempt.error)


class Dispatcher(threading.Thread):
    """One per worker process: turns endings into deliveries and follow-up jobs, and due
    deliveries into tasks. Several may run (one per worker); each item goes to one of them."""

    def __init__(self, rt: Runtime | None = None, interval_s: float = 0.5) -> None:
        super().__init__(name="tuneset-dispatcher", daemon=True)
        self.rt = rt or runtime()
        self.settings = self.rt.settings
        self.interval_s = interval_s
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        jobs = self.rt.jobs
        store = _webhooks(self.settings, self.rt.state.r)
        pause = self.interval_s
        recovered = False
        while not self.stopping.is_set():
            try:
                if not recovered:
                    jobs.requeue_unfinished_notifications()
                    recovered = True
                self.step(jobs, store)
                pause = self.interval_s
            except (redis.RedisError, OperationalError) as e:  # Redis is away: wait for it
                log.warning("dispatcher: %s; retrying in %.1f s", type(e).__name__, pause)
                self.stopping.wait(pause)
                pause = min(pause * 2, 5.0)
            except Exception:  # a bug in one item must not stop every later announcement
                log.exception("dispatcher step failed")
                self.stopping.wait(pause)

    def step(self, jobs: Jobs, store: WebhookStore | None) -> None:
        job_id = jobs.take_notification(self.interval_s)
        if job_id is not None:
            announce(self.settings, jobs, store, job_id)
            jobs.notified(job_id)
        if store is None:
            return
        for delivery_id in store.claim_due(time.time(), 50, lease_s=self.settings.webhook_timeout_s * 3 + 60):
            enqueue(self.settings, DELIVER_TASK, [delivery_id])
