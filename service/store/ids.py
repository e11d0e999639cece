"""The namespace every Redis key lives in, and the ids and times stored under it.

Its own module so that the job lifecycle (`service.jobs`) and the other stores share them
without importing each other."""

from __future__ import annotations

import secrets
import threading
import time

P = "tuneset:"  # the prefix of every key tuneset writes

_last_id_time = [0, 0]  # the last id's millisecond and its sequence number within it, in this process
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """Sortable by creation time (a millisecond prefix, then a sequence number, so ids made in
    the same millisecond by one process keep their order), unguessable (a random suffix)."""
    with _id_lock:
        ms = max(int(time.time() * 1000), _last_id_time[0])
        seq = _last_id_time[1] + 1 if ms == _last_id_time[0] else 0
        if seq > 0xFFFF:  # 65,536 ids in one millisecond: borrow the next one
            ms, seq = ms + 1, 0
        _last_id_time[:] = [ms, seq]
    return f"{prefix}_{ms:012x}{seq:04x}{secrets.token_hex(6)}"


def now() -> float:
    return round(time.time(), 3)
