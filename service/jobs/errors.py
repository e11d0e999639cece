"""The closed list of the codes a job can fail (or be cancelled) with.

A job's `error` is `{"code", "message"}`. The code is one of `ErrorCode` below, or the provider's
own code passed on verbatim (`ProviderCode`: e.g. `invalid_n_examples` when the provider rejects
a file, `http_400` when it gave none), so a caller can tell our refusals from the provider's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

import msgspec

ProviderCode = NewType("ProviderCode", str)
"""A code the provider gave (an API error's `code`, a rejected file's or a failed job's)."""


class ErrorCode(StrEnum):
    """tuneset's own job error codes; `ErrorCode.x.doc` says when each is given."""

    doc: str

    def __new__(cls, value: str, doc: str = "") -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.doc = doc
        return member

    internal_error = (
        "internal_error",
        "a step raised an unexpected exception (a bug); the job ends rather than stays running",
    )
    time_limit_exceeded = (
        "time_limit_exceeded",
        "a step ran longer than TUNESET_BUILD_TIME_LIMIT_S",
    )
    enqueue_failed = (
        "enqueue_failed",
        "the API recorded the job but the broker was unreachable",
    )
    too_many_attempts = (
        "too_many_attempts",
        "a step was delivered more often than its redelivery cap (it keeps killing its worker)",
    )
    worker_lost = (
        "worker_lost",
        "a step's worker vanished more often than TUNESET_LEASE_MAX_REDELIVERIES allows",
    )
    validation_failed = (
        "validation_failed",
        "examples failed the recipe's policies; report.json says which",
    )
    split_failed = (
        "split_failed",
        "the train/validation split cannot give each side the provider's minimum",
    )
    profile_unavailable = (
        "profile_unavailable",
        "the build's model profile was deleted or no longer loads",
    )
    profile_changed = (
        "profile_changed",
        "the model profile was replaced after the build was submitted",
    )
    build_failed = (
        "build_failed",
        "the build this job waited for failed",
    )
    build_cancelled = (
        "build_cancelled",
        "the build this job waited for was cancelled",
    )
    upload_failed = (
        "upload_failed",
        "the upload this job waited for failed",
    )
    upload_cancelled = (
        "upload_cancelled",
        "the upload this job waited for was cancelled",
    )
    build_not_succeeded = (
        "build_not_succeeded",
        "an upload started on a build that has not succeeded",
    )
    upload_not_succeeded = (
        "upload_not_succeeded",
        "a fine-tune started on an upload that has not succeeded",
    )
    not_configured = (
        "not_configured",
        "TUNESET_SECRET_KEY is missing, so provider keys cannot be read",
    )
    provider_deleted = (
        "provider_deleted",
        "the provider profile was deleted while the job waited",
    )
    provider_unavailable = (
        "provider_unavailable",
        "the provider stayed unreachable or overloaded through every retry",
    )
    url_refused = (
        "url_refused",
        "the provider's host now resolves to an address the SSRF guard refuses",
    )
    fine_tune_failed = (
        "fine_tune_failed",
        "the provider's fine-tuning job failed without giving a code",
    )


Code = ErrorCode | ProviderCode


class JobError(msgspec.Struct, frozen=True):
    """What a failed job (and a follower ended by its predecessor) records as `error`."""

    code: str  # an ErrorCode's value or a ProviderCode
    message: str


def waited_for(kind: str, status: str) -> ErrorCode:
    """The code of a follower ended because the job it waited for (`kind`) ended `status`."""
    return ErrorCode(f"{kind}_{status}")
