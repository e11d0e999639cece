"""Live jobs with no step in flight: what a lost broker message leaves behind.

Leases cover a step from the moment a worker receives its message; the broker covers it while it
waits in a queue or sits unacknowledged. One gap remains: kombu's Redis transport pops a message
(BRPOP) and records it as unacknowledged in a second command, so a Redis crash between the two —
or an AOF that lost its last second — loses the message with no lease and nothing to redeliver.
The job would stay queued (or running, between steps) forever.

Every job whose first step was sent is in an index of live jobs (`Jobs.mark_sent`) until it ends,
scored by when it was last seen in flight. The sweep looks at the ones not seen for a while: a job
with a lease on one of its steps, or named by a message waiting in a queue or held unacknowledged,
is seen now; the others are orphans. A job's first step (`chain.task_of(kind)`) resumes it
whatever it was doing — a build plans again and its shards keep their completion markers, an
upload finds its recorded file ids, a fine-tune its recorded provider job and polls again — so
sending it is safe even in the rare case where the message was not lost after all.

With more than `scan_limit` messages waiting nobody can say which job has none: the sweep then
does nothing (a deep backlog is drained first; its messages are there).
"""

from __future__ import annotations

import msgspec

from service.jobs.leases import Leases
from service.jobs.specs import Kind
from service.jobs.store import TERMINAL, Jobs
from service.queue import jobs_in_broker
from service.settings import Settings


class Orphan(msgspec.Struct, frozen=True, kw_only=True):
    """A live job found with nothing in flight, and where it stood then."""

    job_id: str
    kind: Kind
    status: str
    stage: str
    done: int


def find_orphans(
    jobs: Jobs, leases: Leases, settings: Settings, *, limit: int = 500, scan_limit: int = 50_000
) -> list[Orphan] | None:
    """The live jobs not seen in flight for `settings.orphan_after_s` that still have nothing in
    flight; those found in flight are marked seen. None when the broker holds too much to tell."""
    candidates = jobs.unseen_since(settings.orphan_after_s, limit)
    if not candidates:
        return []
    records = {job_id: jobs.get(job_id) for job_id in candidates}
    jobs.forget_live([j for j, job in records.items() if job is None or job["status"] in TERMINAL])
    live = {j: job for j, job in records.items() if job is not None and job["status"] not in TERMINAL}
    if not live:
        return []
    waiting = jobs_in_broker(jobs.r, settings, scan_limit)
    if waiting is None:
        return None
    in_flight = (leases.job_ids() | waiting) & live.keys()
    jobs.seen_in_flight(sorted(in_flight))
    return [
        Orphan(
            job_id=j,
            kind=job["kind"],
            status=str(job["status"]),
            stage=str(job.get("stage") or ""),
            done=int(job.get("done") or 0),
        )
        for j, job in live.items()
        if j not in in_flight
    ]
