"""One delivery attempt, reduced to a record: the caller's outage is data, never our exception."""

from __future__ import annotations

import time

import httpx

from service.metrics import record_webhook_attempt
from service.ssrf import UrlRefused
from service.webhooks.attempt import Attempt

__all__ = ["Attempt", "send_once"]


def send_once(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
    """POST `body` once through `client` (a guarded client); only a 2xx counts as delivered.

    The response body is never read: a receiver cannot make us buffer an arbitrary amount.
    """
    at = round(time.time(), 3)
    start = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            if response.is_redirect:
                location = response.headers.get("location", "")[:200]
                error = f"HTTP {status} redirect to {location!r}, not followed"
            elif not response.is_success:
                error = f"HTTP {status} {response.reason_phrase}".rstrip()
    except UrlRefused as exc:
        error = f"refused: {exc.reason}"
    except httpx.TimeoutException as exc:
        error = f"timed out ({type(exc).__name__})"
    except httpx.ConnectError as exc:
        error = f"could not connect: {exc}"
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency_ms = round((time.perf_counter() - start) * 1000, 1)
    record_webhook_attempt(status, error, latency_ms / 1000)
    return Attempt(at=at, status_code=status, latency_ms=latency_ms, error=error, ok=error is None)
