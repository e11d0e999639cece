"""One delivery attempt as recorded: what the sender produces and the webhook store keeps.

Its own module so the store depends on the record only, never on the code that sends."""

from __future__ import annotations

import msgspec


class Attempt(msgspec.Struct, kw_only=True):
    at: float  # wall-clock start, epoch seconds
    status_code: int | None  # None when no response arrived
    latency_ms: float
    error: str | None
    ok: bool
