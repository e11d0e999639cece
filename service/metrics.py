"""What an operator watches, shared by the API and the workers: one owner of every metric name.

The counters here are process-wide (one `REGISTRY`), unlike the API's per-app request counters
(`service.api.Metrics`). In a worker pod `PROMETHEUS_MULTIPROC_DIR` is set, so prometheus_client
keeps each process's values in memory-mapped files there and `workers.metrics` serves their sum;
in the API (one process) they are read in memory. Queue depth and the job-ending backlog are not
counted at all: `QueueCollector` reads them from Redis when Prometheus scrapes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator

import httpx
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
# Every metric here has labels, so no value exists (and, in multiprocess mode, no file is opened)
# until it is first recorded: the worker can clear the directory at start (workers.metrics).

JOB_TRANSITIONS = Counter(
    "tuneset_job_transitions",
    "Jobs entering a status, by kind (build, upload, fine_tune) and status (queued, running, "
    "succeeded, failed, cancelled); counted by the process that made the transition.",
    ["kind", "status"],
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "tuneset_step_duration_seconds",
    "Time one worker step (a Celery task: build, build_shard, build_finalize, upload, fine_tune, "
    "fine_tune_poll, deliver) ran, by step and outcome (success, failure, retry).",
    ["step", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
STEPS_RUNNING = Gauge(
    "tuneset_steps_running",
    "Worker steps running now, by step.",
    ["step"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LEASE_EXPIRIES = Counter(
    "tuneset_lease_expiries",
    "Running steps whose lease expired (their worker stopped renewing it), by step.",
    ["step"],
    registry=REGISTRY,
)
REDELIVERIES = Counter(
    "tuneset_redeliveries",
    "Steps handed out again, by step and by what handed them out (broker: the visibility timeout "
    "or a worker lost mid-step; lease: the reaper).",
    ["step", "source"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "tuneset_webhook_attempts",
    "Webhook delivery attempts, by outcome (delivered, http_4xx, http_5xx, redirect, timeout, "
    "connect_error, refused, error).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_DURATION = Histogram(
    "tuneset_webhook_attempt_duration_seconds",
    "Time one webhook delivery attempt took, until the receiver's status line or the failure, by outcome.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PROVIDER_DURATION = Histogram(
    "tuneset_provider_request_duration_seconds",
    "Time to a provider's response headers, by operation (files.create, fine_tuning.jobs.get, ...) "
    "and status code; every HTTP attempt, the SDK's own retries included.",
    ["operation", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600),
    registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    "tuneset_provider_request_errors",
    "Provider requests that failed, by operation and error: 429, 5xx (a status) or the transport "
    "error's name (ConnectError, ReadTimeout, ...).",
    ["operation", "error"],
    registry=REGISTRY,
)


def step_name(task_name: str) -> str:
    """`tuneset.build_shard` → `build_shard`: the label a Celery task's metrics carry."""
    return task_name.removeprefix("tuneset.")


def record_job_transition(kind: str, status: str) -> None:
    JOB_TRANSITIONS.labels(kind, status).inc()


def record_lease_expired(task: str) -> None:
    """A step's lease expired (its worker stopped renewing it): the reaper calls this."""
    LEASE_EXPIRIES.labels(step_name(task)).inc()


def record_redelivery(job_id: str, task: str, source: str = "lease") -> None:
    """A step of `job_id` was handed out again (the job id is for the caller's logs, not a label:
    label values must stay few)."""
    del job_id
    REDELIVERIES.labels(step_name(task), source).inc()


def record_webhook_attempt(status_code: int | None, error: str | None, seconds: float) -> None:
    """One delivery attempt, as `service.webhooks.send.Attempt` reports it."""
    outcome = _webhook_outcome(status_code, error)
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    WEBHOOK_DURATION.labels(outcome).observe(seconds)


def _webhook_outcome(status_code: int | None, error: str | None) -> str:
    if error is None:
        return "delivered"
    if status_code is not None:
        if 300 <= status_code < 400:
            return "redirect"
        return "http_5xx" if status_code >= 500 else "http_4xx"
    for prefix, outcome in (("timed out", "timeout"), ("could not connect", "connect_error")):
        if error.startswith(prefix):
            return outcome
    return "refused" if error.startswith("refused") else "error"


# The words of the provider API's paths; any other segment is an id (bounded label values).
_PATH_WORDS = frozenset(
    {"files", "content", "uploads", "parts", "complete", "cancel", "fine_tuning", "jobs", "events"}
    | {"checkpoints", "pause", "resume", "models"}
)
_METHOD_VERBS = {"GET": "get", "POST": "create", "DELETE": "delete"}


def provider_operation(method: str, path: str) -> str:
    """`POST /v1/files` → `files.create`, `GET /v1/fine_tuning/jobs/ftjob-1/events` →
    `fine_tuning.jobs.events.get`: ids and the base URL's own prefix dropped."""
    words = [segment for segment in path.split("/") if segment in _PATH_WORDS]
    if not words:
        return "other"
    last_is_id = path.rstrip("/").rsplit("/", 1)[-1] not in _PATH_WORDS
    verb = _METHOD_VERBS.get(method, method.lower())
    if method == "GET" and not last_is_id and words[-1] in {"files", "jobs", "events", "checkpoints"}:
        verb = "list"
    return ".".join([*words, verb])


def record_provider_request(operation: str, status: int | None, seconds: float, error: str | None) -> None:
    PROVIDER_DURATION.labels(operation, str(status) if status is not None else "none").observe(seconds)
    if error is not None:
        PROVIDER_ERRORS.labels(operation, error).inc()
    elif status is not None and (status == 429 or status >= 500):
        PROVIDER_ERRORS.labels(operation, str(status)).inc()


class ProviderMeter(httpx.BaseTransport):
    """The transport under the SSRF guard of provider clients: times every request it sends and
    counts the failures (the guard's refusals happen before, and fail the job instead)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        operation = provider_operation(request.method, request.url.path)
        start = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            record_provider_request(operation, None, time.perf_counter() - start, error_label(exc))
            raise
        record_provider_request(operation, response.status_code, time.perf_counter() - start, None)
        return response

    def close(self) -> None:
        self._inner.close()


class QueueCollector(Collector):
    """Read at scrape time from Redis: how many steps wait in each Celery queue (the length of the
    queue's list, which is also what KEDA scales the workers on), how many a worker holds unacked
    (running, or waiting on a countdown), and how many job endings wait for the dispatcher."""

    def __init__(self, client: redis.Redis, queues: Iterable[str], notify_key: str) -> None:
        self._r = client
        self._queues = list(queues)
        self._notify_key = notify_key

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # values come from Redis at scrape time only

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "tuneset_queue_depth",
            "Steps waiting in each Celery queue (its Redis list's length).",
            labels=["queue"],
        )
        up = GaugeMetricFamily("tuneset_queue_redis_up", "1 when Redis answered this scrape, else 0.")
        try:
            pipe = self._r.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            pipe.hlen("unacked")  # service.queue.UNACKED: delivered, not yet acknowledged
            pipe.llen(self._notify_key)
            *lengths, unacked, notify = pipe.execute()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for queue, length in zip(self._queues, lengths, strict=True):
            depth.add_metric([queue], int(length))
        yield depth
        yield GaugeMetricFamily(
            "tuneset_queue_unacked",
            "Steps workers hold without having acknowledged them: running, or waiting on a countdown.",
            value=int(unacked),
        )
        yield GaugeMetricFamily(
            "tuneset_job_endings_pending",
            "Job endings not yet turned into webhook deliveries and chained jobs by a dispatcher.",
            value=int(notify),
        )


def render_process_metrics() -> bytes:
    """This process's shared metrics, or, with PROMETHEUS_MULTIPROC_DIR set, the sum over every
    process that wrote there."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(multiprocess_registry())
    return generate_latest(REGISTRY)


def multiprocess_registry() -> CollectorRegistry:
    """The sum of what every process wrote under PROMETHEUS_MULTIPROC_DIR, read at each scrape."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


_SAFE_ERROR = re.compile(r"[^A-Za-z0-9_]")


def error_label(exc: BaseException) -> str:
    return _SAFE_ERROR.sub("_", type(exc).__name__)[:40]


def metered_transport() -> httpx.BaseTransport:
    """What a provider client connects through: httpx's own transport, timed and counted."""
    return ProviderMeter(httpx.HTTPTransport())
