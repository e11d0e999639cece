"""Retry delays: immediate first attempt, the schedule plus at most 20 % jitter, then give up."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.settings import Settings
from service.webhooks.schedule import next_delay

schedules = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=12)


@given(schedules, st.integers(min_value=0, max_value=2**32 - 1))
def test_every_delay_is_the_schedule_plus_at_most_20_percent(schedule: list[float], seed: int) -> None:
    rng = random.Random(seed)
    assert next_delay(1, schedule, rng) == 0.0
    for n, base in enumerate(schedule, start=1):
        delay = next_delay(n + 1, schedule, rng)  # after the n-th failure
        assert delay is not None
        assert base <= delay <= base * 1.2
    assert next_delay(len(schedule) + 2, schedule, rng) is None
    assert next_delay(len(schedule) + 50, schedule, rng) is None


def test_jitter_spreads_delays() -> None:
    rng = random.Random(7)
    delays = {next_delay(2, [100.0], rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(d for d in delays if d is not None) < 105 < max(d for d in delays if d is not None)


def test_attempts_are_numbered_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        next_delay(0, [1.0], random.Random(0))


def test_default_schedule_retries_for_more_than_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNESET_WEBHOOK_RETRY_SCHEDULE_S", raising=False)
    schedule = Settings().webhook_retry_schedule_s
    assert sum(schedule) >= 24 * 3600
    assert schedule == sorted(schedule)  # backoff never shortens
    rng = random.Random(0)
    total, attempt = 0.0, 1
    while (delay := next_delay(attempt, schedule, rng)) is not None:
        total += delay
        attempt += 1
    assert attempt - 1 == len(schedule) + 1
    assert 24 * 3600 <= total <= 1.2 * sum(schedule)
