"""Standard Webhooks signatures (https://www.standardwebhooks.com), so callers verify with any SDK.

The `standardwebhooks` package signs text and reads the timestamp with `datetime.replace(tzinfo=utc)`,
which silently shifts an aware non-UTC datetime; we hand it a UTC datetime from integer seconds.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook


def new_secret() -> str:
    """A signing secret in the spec's format: "whsec_" and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: datetime | int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt; `msg_id` is the same on every retry, `body` is UTF-8 JSON."""
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (a naive datetime's instant is ambiguous)")
        seconds = int(timestamp.timestamp())
    else:
        seconds = int(timestamp)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(seconds, tz=UTC), body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
