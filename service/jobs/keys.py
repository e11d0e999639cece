"""Every Redis key of a job, spelled here and nowhere else (tests/unit/test_boundaries.py checks).

A job is a hash, an event stream, a set of finished shards (sharded builds) and an entry in its
tenant's index; endings wait in the notification list for the dispatcher. A provider's
fine-tuning job id maps back to the tuneset job (its webhooks name only the provider's id), and
an upload records the provider's file id per (build, provider, side)."""

from __future__ import annotations

from service.store.ids import P

NOTIFY = P + "notify"  # job ids that reached a terminal state, waiting for their webhooks
NOTIFY_WORKING = P + "notify:working"  # taken by a dispatcher, not yet turned into deliveries
LIVE = P + "jobs:live"  # job ids whose first step was sent, until they end -> when last seen in flight
SWEEP_TURN = P + "jobs:sweep"  # the lock of the worker whose turn it is to sweep for orphans


def job_key(job_id: str) -> str:
    """A job's hash."""
    return P + f"job:{job_id}"


def events_key(job_id: str) -> str:
    """A job's event stream (read by `Jobs.events` and by `service.store.events.EventFeed`)."""
    return P + f"job:{job_id}:events"


def shards_done_key(job_id: str) -> str:
    """The indexes of a sharded build's finished shards."""
    return P + f"job:{job_id}:shards_done"


def tenant_jobs_key(tenant: str) -> str:
    """A tenant's job ids, sorted by id (ids sort by creation time)."""
    return P + f"t:{tenant}:jobs"


def dataset_jobs_key(dataset_id: str) -> str:
    """The ids of the jobs built from a dataset, whose files go when it is deleted."""
    return P + f"ds:{dataset_id}:jobs"


def provider_job_key(provider_id: str, provider_job_id: str) -> str:
    """The tuneset job that created a provider's fine-tuning job."""
    return P + f"ftjob:{provider_id}:{provider_job_id}"


def upload_key(build_job: str, provider_id: str, side: str) -> str:
    """One side of a build uploaded to a provider: its file id once known."""
    return P + f"upload:{build_job}:{provider_id}:{side}"
