"""Ids sort by creation, even when many are made in the same millisecond, and do not repeat."""

from __future__ import annotations

import re
import threading

from service.store.state import new_id


def test_ids_made_in_a_burst_keep_their_order_and_format() -> None:
    ids = [new_id("job") for _ in range(20_000)]  # far more than one per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"job_[0-9a-f]{28}", i) for i in ids)


def test_ids_from_threads_are_distinct() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def make(bucket: list[str]) -> None:
        bucket.extend(new_id("msg") for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for bucket in out for i in bucket]
    assert len(set(every)) == len(every)
    assert all(bucket == sorted(bucket) for bucket in out)
