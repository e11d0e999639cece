"""The one timestamp format of the API, its webhooks and the build report: RFC 3339 in UTC with
milliseconds, `2026-12-02T07:15:04.123Z`.

Times are stored as epoch seconds (Redis, job records) and formatted here, at the edge, so every
answer writes them alike. A fixed width keeps them sortable as text.
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch_s: float) -> str:
    """`epoch_s` (seconds since 1970, UTC) as RFC 3339 with milliseconds and a `Z`."""
    ms = round(float(epoch_s) * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def rfc3339_or_none(epoch_s: float | str | None) -> str | None:
    """`rfc3339`, or None for a time not reached yet (None or an empty stored field)."""
    return None if epoch_s is None or epoch_s == "" else rfc3339(float(epoch_s))
