"""Plain functions over the official `openai` SDK for uploads and fine-tuning jobs.

No Redis, no Celery: callers own state, idempotency and long backoff. The SDK already retries
a request (2 times by default: 408, 409, 429, >= 500, timeouts, connection errors, honouring
Retry-After); `is_transient` tells callers which errors are worth retrying later.

Not idempotent on the provider's side: the SDK sends no Idempotency-Key to OpenAI, so a request
whose response was lost and that the SDK retried can create a second file or job. `find_file`
and `find_job` let a caller look before it creates again.

The SDK connects only through the SSRF guard (`service.ssrf.guarded_client`): every request
resolves the base URL's host again, refuses a private or metadata address unless the operator
allowlisted it, and connects to the checked address, so a provider hostname that rebinds after
registration never receives the training files or the key. A refusal raises `UrlRefused`, which
the SDK neither retries nor wraps; `is_transient` says no to it, except to a failed lookup.

The API key lives in the client and in `ProviderProfile`, whose repr masks it; nothing here logs
it or puts it into an exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import msgspec
import openai
from openai.types import FileObject
from openai.types.fine_tuning import (
    DpoHyperparametersParam,
    FineTuningJob,
    SupervisedHyperparametersParam,
    job_create_params,
)

from service.metrics import metered_transport
from service.ssrf import Allowlist, HostUnresolved, Resolver, UrlRefused, guarded_client, system_resolve

if TYPE_CHECKING:
    import httpx2  # the SDK's own HTTP library, named only in a cast

SINGLE_FILE_LIMIT = 512 * 2**20
PART_SIZE = 64 * 2**20
JSONL_MIME = "text/jsonl"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class ProviderProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Where and as whom to call a provider. The repr masks the key (reprs end up in logs and
    tracebacks); encoding the Struct keeps it, for storage that encrypts it."""

    name: str
    base_url: str
    api_key: str
    kind: Literal["openai", "azure"] = "openai"
    api_version: str | None = None
    models: list[str] | None = None

    def __repr__(self) -> str:
        return (
            f"ProviderProfile(name={self.name!r}, base_url={self.base_url!r}, api_key='***', "
            f"kind={self.kind!r}, api_version={self.api_version!r}, models={self.models!r})"
        )

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, object]]:
        return [("name", self.name), ("base_url", self.base_url), ("api_key", "***"), ("kind", self.kind)]


class ProviderFileRejected(Exception):
    """The provider processed the file and refused it; `message` is its `status_details`."""

    def __init__(self, message: str, code: str = "invalid_file", file_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.file_id = file_id


class FineTuneRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A fine-tuning job as tuneset asks for it; None leaves a hyperparameter to the provider."""

    model: str
    training_file: str
    validation_file: str | None = None
    method: Literal["supervised", "dpo"] = "supervised"
    suffix: str | None = None
    seed: int | None = None
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    beta: float | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.beta is not None and self.method != "dpo":
            raise ValueError("beta is a DPO hyperparameter; the method is supervised")


class JobErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str
    param: str | None = None


class JobEventInfo(msgspec.Struct, frozen=True):
    created_at: int
    level: str
    message: str


class CheckpointInfo(msgspec.Struct, frozen=True):
    step: int
    fine_tuned_model_checkpoint: str
    metrics: dict[str, float]


class JobSnapshot(msgspec.Struct, frozen=True):
    """A job as seen now: events oldest first, checkpoints by step."""

    id: str
    status: str
    trained_tokens: int | None
    fine_tuned_model: str | None
    error: JobErrorInfo | None
    events: list[JobEventInfo]
    checkpoints: list[CheckpointInfo]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


def make_client(
    profile: ProviderProfile,
    *,
    allow: Allowlist,
    resolve: Resolver = system_resolve,
    max_retries: int = 2,
    timeout: float = 600.0,
) -> openai.OpenAI:
    """An SDK client for the profile (`AzureOpenAI` is a subclass of `OpenAI`) whose every request
    goes through the SSRF guard with the operator's `allow` list (no env proxies, no redirects)."""
    if profile.kind == "azure" and not profile.api_version:
        raise ValueError(f"provider {profile.name!r}: Azure needs an api_version")
    # The SDK types `http_client` as an httpx2 client, and takes an httpx one too (it checks for
    # either at run time); the guard, shared with webhook deliveries, is built on httpx.
    http = cast(
        "httpx2.Client", guarded_client(allow, resolve, timeout=timeout, transport=metered_transport())
    )
    if profile.kind == "azure":
        return openai.AzureOpenAI(
            api_key=profile.api_key,
            azure_endpoint=profile.base_url,
            api_version=profile.api_version,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http,
        )
    return openai.OpenAI(
        api_key=profile.api_key,
        base_url=profile.base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=http,
    )


def upload_file(
    client: openai.OpenAI,
    path: Path,
    filename: str,
    *,
    single_file_limit: int = SINGLE_FILE_LIMIT,
    part_size: int = PART_SIZE,
    parallel: int = 4,
) -> str:
    """Upload a fine-tuning file; its provider file id. Up to `single_file_limit` bytes in one
    Files request, larger through the Uploads API: parts in parallel, then complete with the
    parts in order and the md5 of the whole file, which the provider checks with the size."""
    size = path.stat().st_size
    if size <= single_file_limit:
        with path.open("rb") as f:  # seekable, so the SDK can resend it on a retry
            return client.files.create(file=(filename, f, JSONL_MIME), purpose="fine-tune").id
    upload = client.uploads.create(bytes=size, filename=filename, mime_type=JSONL_MIME, purpose="fine-tune")
    try:
        md5 = _md5(path)

        failed: list[BaseException] = []  # the first failed part's error stops every later part

        def send_part(offset: int) -> str:
            if failed:  # checked as each part starts: at most the parts already in flight go on
                raise _PartSkipped
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    data = f.read(part_size)
                return client.uploads.parts.create(upload.id, data=data).id
            except BaseException as e:
                failed.append(e)
                raise

        pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="upload-part")
        try:
            part_ids = list(pool.map(send_part, range(0, size, part_size)))
        except _PartSkipped:  # a part skipped before the failed one came up in order
            raise failed[0] from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        done = client.uploads.complete(upload.id, part_ids=part_ids, md5=md5)
    except BaseException:
        _cancel_quietly(client, upload.id)
        raise
    if done.file is None:
        raise openai.OpenAIError(f"upload {upload.id} completed without a file")
    return done.file.id


class _PartSkipped(Exception):
    """A part not sent because an earlier-started one failed."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _cancel_quietly(client: openai.OpenAI, upload_id: str) -> None:
    with contextlib.suppress(openai.OpenAIError, UrlRefused):  # it expires an hour after creation anyway
        client.uploads.cancel(upload_id)


def wait_processed(
    client: openai.OpenAI, file_id: str, timeout_s: float, *, poll_s: float = 1.0
) -> FileObject:
    """Poll until the provider has processed the file. Raises ProviderFileRejected with the
    provider's message when it refused the file, TimeoutError when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        file = client.files.retrieve(file_id)
        if file.status == "processed":
            return file
        if file.status == "error":
            message = file.status_details or "the provider rejected the file"
            code = "invalid_n_examples" if "must have at least" in message else "invalid_file"
            raise ProviderFileRejected(message, code, file_id)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"file {file_id} still {file.status} after {timeout_s:g} s")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def create_fine_tune(client: openai.OpenAI, request: FineTuneRequest) -> FineTuningJob:
    """Create the job; the request's hyperparameters go under `method=`, as the API wants now."""
    method: job_create_params.Method
    if request.method == "dpo":
        dpo: DpoHyperparametersParam = {}
        if request.beta is not None:
            dpo["beta"] = request.beta
        _common_hyperparameters(request, dpo)
        method = {"type": "dpo", "dpo": {"hyperparameters": dpo}}
    else:
        supervised: SupervisedHyperparametersParam = {}
        _common_hyperparameters(request, supervised)
        method = {"type": "supervised", "supervised": {"hyperparameters": supervised}}
    return client.fine_tuning.jobs.create(
        model=request.model,
        training_file=request.training_file,
        validation_file=request.validation_file if request.validation_file else openai.omit,
        suffix=request.suffix if request.suffix is not None else openai.omit,
        seed=request.seed if request.seed is not None else openai.omit,
        metadata=request.metadata if request.metadata else openai.omit,
        method=method,
    )


def _common_hyperparameters(
    request: FineTuneRequest, into: SupervisedHyperparametersParam | DpoHyperparametersParam
) -> None:
    if request.n_epochs is not None:
        into["n_epochs"] = request.n_epochs
    if request.batch_size is not None:
        into["batch_size"] = request.batch_size
    if request.learning_rate_multiplier is not None:
        into["learning_rate_multiplier"] = request.learning_rate_multiplier


def job_status(client: openai.OpenAI, job_id: str, *, max_events: int = 1000) -> JobSnapshot:
    """The job with its events (the API lists them newest first; here oldest first) and its
    checkpoints (by step)."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    events: list[JobEventInfo] = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
        events.append(JobEventInfo(created_at=event.created_at, level=event.level, message=event.message))
        if len(events) >= max_events:
            break
    events.reverse()
    checkpoints = sorted(
        (
            CheckpointInfo(
                step=c.step_number,
                fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                metrics={k: v for k, v in c.metrics.model_dump().items() if isinstance(v, int | float)},
            )
            for c in client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)
        ),
        key=lambda c: c.step,
    )
    error = job.error
    return JobSnapshot(
        id=job.id,
        status=job.status,
        trained_tokens=job.trained_tokens,
        fine_tuned_model=job.fine_tuned_model,
        error=JobErrorInfo(code=error.code, message=error.message, param=error.param) if error else None,
        events=events,
        checkpoints=checkpoints,
    )


def find_file(client: openai.OpenAI, filename: str, size: int | None = None) -> FileObject | None:
    """The newest fine-tune file with this name (and size), if the provider has one: lets a
    retried upload find what an earlier attempt stored before its response was lost."""
    for file in client.files.list(purpose="fine-tune", order="desc"):
        if file.filename == filename and (size is None or file.bytes == size) and file.status != "error":
            return file
    return None


def find_job(client: openai.OpenAI, key: str, value: str) -> FineTuningJob | None:
    """The newest job whose metadata has `key` = `value` (put a build id there to create once)."""
    for job in client.fine_tuning.jobs.list(metadata={key: value}, limit=20):
        if (job.metadata or {}).get(key) == value:
            return job
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying later: the provider was unreachable, slow, rate-limiting or failing
    (connection errors, timeouts, 408, 409, 429, >= 500). Not: the request itself was wrong
    (400, 401, 403, 404, 422, a rejected file, a base URL the SSRF guard refuses). A host that
    does not resolve now is transient, as it was when the SDK resolved it itself."""
    if isinstance(exc, openai.APIConnectionError | TimeoutError | ConnectionError | HostUnresolved):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False
