"""The job lifecycle: job records, their Redis keys, typed specs, the state machine and error codes.

Nothing else spells a job's keys or moves its status (tests/unit/test_boundaries.py). The chain
build → upload → fine-tune is in `service.jobs.chain` (it enqueues, so it is imported on its own);
task names and queues are in `service.queue`.
"""

from service.jobs.errors import Code, ErrorCode, JobError, ProviderCode
from service.jobs.specs import BuildSpec, Callback, FineTuneSpec, JobSpec, Kind, UploadSpec, decode_spec
from service.jobs.store import DEFAULT_JOB_RETENTION_S, TERMINAL, Jobs, Status, new_job_id, spec_of

__all__ = [
    "DEFAULT_JOB_RETENTION_S",
    "TERMINAL",
    "BuildSpec",
    "Callback",
    "Code",
    "ErrorCode",
    "FineTuneSpec",
    "JobError",
    "JobSpec",
    "Jobs",
    "Kind",
    "ProviderCode",
    "Status",
    "UploadSpec",
    "decode_spec",
    "new_job_id",
    "spec_of",
]
