"""Webhook delivery for the fake provider.

Signed per Standard Webhooks with the `standardwebhooks` package (what the SDK's
`client.webhooks.unwrap` verifies), one `webhook-id` for all attempts of an event so receivers
can deduplicate, a fresh timestamp and signature per attempt. Attempts run in a task on the
server's loop with the blocking POST in a worker thread, so a slow or dead receiver never holds
up a request; failures are retried with exponential backoff, then recorded as failed.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import msgspec
from standardwebhooks import Webhook

from service.providers.fake_wire import Delivery

USER_AGENT = "tuneset-fake-provider/1.0 (OpenAI webhook shape)"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


class WebhookEvent(msgspec.Struct):
    id: str
    type: str
    created_at: int
    data: dict[str, str]
    object: str = "event"


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> int:
    """POST once; the status (an HTTP error status too), OSError when nothing answered."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code


async def deliver(delivery: Delivery, body: bytes, secret: str, *, attempts: int, backoff_s: float) -> None:
    for attempt in range(max(1, attempts)):
        if attempt:
            await asyncio.sleep(min(backoff_s * 2 ** (attempt - 1), 30.0))
        headers = signed_headers(secret, delivery.event_id, body, int(time.time()))
        delivery.attempts += 1
        try:
            delivery.last_status = await asyncio.to_thread(post, delivery.url, body, headers)
            delivery.last_error = None
        except OSError as e:
            delivery.last_status, delivery.last_error = None, f"{type(e).__name__}: {e}"
            continue
        if 200 <= delivery.last_status < 300:
            delivery.status = "delivered"
            return
    delivery.status = "failed"
