"""Wire records of the fake provider, field for field what the `openai` SDK's models parse
(FileObject, Upload, UploadPart, FineTuningJob, FineTuningJobEvent, FineTuningJobCheckpoint),
plus the fake's own admin records (faults, deliveries, config)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Phase = Literal["before", "after"]


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class FileObject(msgspec.Struct):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "uploaded"
    status_details: str | None = None
    expires_at: int | None = None
    object: str = "file"


class FileDeleted(msgspec.Struct):
    id: str
    deleted: bool = True
    object: str = "file"


class Upload(msgspec.Struct):
    id: str
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"] = "pending"
    file: FileObject | None = None
    object: str = "upload"


class UploadPart(msgspec.Struct):
    id: str
    created_at: int
    upload_id: str
    object: str = "upload.part"


class JobError(msgspec.Struct):
    code: str
    message: str
    param: str | None = None


class MethodBody(msgspec.Struct):
    hyperparameters: dict[str, Any]


class Method(msgspec.Struct, omit_defaults=True):
    type: Literal["supervised", "dpo"]
    supervised: MethodBody | None = None
    dpo: MethodBody | None = None


class FineTuningJob(msgspec.Struct):
    id: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None
    seed: int
    hyperparameters: dict[str, Any]
    method: Method
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    organization_id: str
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"] = (
        "validating_files"
    )
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    result_files: list[str] = msgspec.field(default_factory=list)
    integrations: list[Any] = msgspec.field(default_factory=list)
    object: str = "fine_tuning.job"


class JobEvent(msgspec.Struct):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None
    object: str = "fine_tuning.job.event"


class Checkpoint(msgspec.Struct):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]
    object: str = "fine_tuning.job.checkpoint"


class Page(msgspec.Struct):
    data: list[Any]
    has_more: bool = False
    object: str = "list"


class Fault(msgspec.Struct, kw_only=True):
    """An injected failure for requests whose "METHOD /path" matches `match` (fnmatch globs; "*"
    for any method). `phase` "before": the request never reaches the provider's logic; "after":
    it was handled (a file stored, a job created) and only the response is delayed, replaced or
    lost. `times` None: every matching request."""

    match: str
    status: int | None = None
    retry_after: float | None = None
    delay_s: float | None = None
    drop: bool = False
    times: int | None = 1
    phase: Phase = "before"
    message: str | None = None
    id: str = ""
    hits: int = 0


class Delivery(msgspec.Struct):
    """One webhook event and how its delivery went."""

    event_id: str
    type: str
    job_id: str
    url: str
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None


class RequestLog(msgspec.Struct):
    method: str
    path: str
    status: int | None
    fault: str | None = None


class FakeConfig(msgspec.Struct, kw_only=True):
    """Runtime settings; `POST /_fake/config` changes them (jobs keep the step they started with)."""

    api_key: str | None = None
    step_seconds: float = 1.0
    processing_seconds: float | None = None  # None: one step
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_attempts: int = 5
    webhook_backoff_s: float = 0.2
    models: list[str] | None = None  # None: any model name
    organization: str = "fake-org"
    max_file_bytes: int = 512 * 2**20
    max_part_bytes: int = 64 * 2**20
    max_upload_bytes: int = 8 * 2**30
    min_examples: int = 10
