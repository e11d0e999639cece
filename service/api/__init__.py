"""The HTTP API (Litestar): `create_app` in `service.api.app` wires everything.

`Services` is what every handler gets injected: settings, Redis state, the blob store, the
model table and the Prometheus metrics of one app. The API never imports `workers`; it
enqueues tasks by name (`service.queue`).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.api.streams import StreamSlots
from service.core.models import ModelTable
from service.metrics import render_process_metrics
from service.settings import Settings
from service.store.blobs import BlobStore, blob_store_from_settings
from service.store.events import EventFeed
from service.store.state import State


class Metrics:
    """The counters of one app, in their own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tuneset_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tuneset_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.batches = Counter(
            "tuneset_batches",
            "Batch pushes, by outcome (stored, rejected, replayed).",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_examples = Counter(
            "tuneset_batch_examples", "Examples stored by batch pushes.", registry=self.registry
        )
        self.batch_bytes = Counter(
            "tuneset_batch_bytes", "Canonical JSONL bytes stored by batch pushes.", registry=self.registry
        )
        self.builds = Counter("tuneset_builds", "Builds started (jobs enqueued).", registry=self.registry)
        self.sse_streams = Gauge(
            "tuneset_sse_streams", "Open job event streams (Server-Sent Events).", registry=self.registry
        )
        self.sse_rejected = Counter(
            "tuneset_sse_rejected",
            "Event streams refused at a cap, by cap (tenant: 429, total: 503).",
            ["cap"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """This app's counters, then the process-wide ones (`service.metrics`: jobs, steps, queues)."""
        return generate_latest(self.registry) + render_process_metrics()


class Services:
    """A plain class, not a dataclass: Litestar would convert a dataclass dependency field by field."""

    def __init__(self, settings: Settings, state: State, metrics: Metrics, table: ModelTable) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.table = table
        self._blobs: BlobStore | None = None
        self._feed: EventFeed | None = None
        self.streams = StreamSlots(
            settings.sse_max_streams,
            settings.sse_max_streams_per_tenant,
            metrics.sse_streams,
            metrics.sse_rejected,
        )
        self._lock = threading.Lock()

    @property
    def blobs(self) -> BlobStore:
        """Made on first use, so building the app (for `tuneset openapi`) touches no disk."""
        with self._lock:
            if self._blobs is None:
                self._blobs = blob_store_from_settings(self.settings)
            return self._blobs

    @property
    def feed(self) -> EventFeed:
        """The async event reader, made on first use inside the app's event loop (its pool belongs
        to that loop) and closed with the app."""
        with self._lock:
            if self._feed is None:
                self._feed = EventFeed(self.settings.redis_url)
            return self._feed

    async def close(self) -> None:
        self.state.r.close()
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.aclose()
