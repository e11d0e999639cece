"""Liveness, readiness (Redis, which is also the broker, answers; a worker thread is free) and
Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable

from litestar import Response, get
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST

from service import logs
from service.api import Metrics, Services
from service.api.errors import ApiProblem, problems
from service.api.schemas import Health

access = logging.getLogger("tuneset.access")


class MetricsMiddleware(ASGIMiddleware):
    """Counts every HTTP request by its route template (not its path: bounded label values), and
    gives it a request id (the caller's `X-Request-ID` when it is a sane one) that its log lines
    carry and its response returns; logs one line per request."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        status = 500
        start = time.perf_counter()
        request_id = _request_id(scope)
        path_params = scope.get("path_params") or {}
        logs.bind(request_id=request_id, job_id=path_params.get("job_id"), tenant=None)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await next_app(scope, receive, send_status)
        finally:
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            access.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


@get("/livez", operation_id="livez", tags=["health"], sync_to_thread=False)
def livez() -> Health:
    """The process serves requests."""
    return Health(status="ok")


def _noop() -> None:
    return None


async def _within(deadline_s: float, check: Awaitable[object]) -> bool:
    """The check finished within the deadline and did not answer False."""
    try:
        return await asyncio.wait_for(check, deadline_s) is not False
    except TimeoutError:
        return False


@get("/readyz", operation_id="readyz", tags=["health"], responses=problems(503))
async def readyz(services: NamedDependency[Services]) -> Health:
    """Redis (state and broker) answers, and a worker thread is free for synchronous requests,
    each within TUNESET_READY_TIMEOUT_S; 503 otherwise."""
    # async, so that it still answers when every worker thread is taken (a readiness check that
    # needs a thread would hang with them)
    deadline = services.settings.ready_timeout_s
    redis_ok, threads_ok = await asyncio.gather(
        _within(deadline, services.feed.ping()),
        _within(deadline, sync_to_thread(_noop)),  # the executor Litestar runs sync handlers in
    )
    if not redis_ok:
        raise ApiProblem(
            503, "not-ready", "Redis (state and broker) is unreachable", headers={"Retry-After": "5"}
        )
    if not threads_ok:
        raise ApiProblem(
            503,
            "not-ready",
            f"no worker thread for synchronous requests became free within {deadline:g} s",
            headers={"Retry-After": "5"},
        )
    return Health(status="ok", checks={"redis": "ok", "threads": "ok"})


@get(
    "/metrics",
    operation_id="metrics",
    tags=["health"],
    sync_to_thread=True,  # queue depths are read from Redis: never on the event loop
    media_type="text/plain",
)
def metrics(services: NamedDependency[Services]) -> Response[bytes]:
    """Prometheus text exposition of this process's counters."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
