"""Retry delays for webhook deliveries: the operator's schedule with jitter.

Jitter spreads the retries of many deliveries that failed together (a receiver outage) so they do
not all return at the same second; it only lengthens a delay, so the schedule is a lower bound.
"""

from __future__ import annotations

import random

JITTER = 0.2


def next_delay(attempt: int, schedule: list[float], rng: random.Random) -> float | None:
    """Seconds to wait before attempt number `attempt` (1-based); None when none is left.

    Attempt 1 goes at once; after attempt n failed, attempt n + 1 waits schedule[n - 1] plus up to
    20 %. With a schedule of k delays a delivery gets k + 1 attempts, then fails for good.
    """
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    if attempt == 1:
        return 0.0
    if attempt - 1 > len(schedule):
        return None
    base = schedule[attempt - 2]
    return base + base * JITTER * rng.random()
