"""Fixed-window rate limits in Redis: one counter per (limit, subject), shared by every API process.

A window opens at the first hit and lasts `window_s`; the counter and its expiry are set in one
Lua step, so a crash between them cannot leave a counter that never expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

# KEYS[1] the counter; ARGV[1] the window in seconds. Returns the count and the seconds left.
_HIT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    count: int  # hits in this window, this one included
    retry_after_s: int  # until the window ends


def hit(r: redis.Redis, name: str, subject: str, limit: int, window_s: int) -> Verdict:
    """Count one hit of `subject` against the limit `name`: `limit` hits per window are allowed."""
    reply: Any = r.eval(_HIT, 1, f"tuneset:rate:{name}:{subject}", str(window_s))
    count, ttl = int(reply[0]), max(1, int(reply[1]))
    return Verdict(allowed=count <= limit, count=count, retry_after_s=ttl)
