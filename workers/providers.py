"""Upload a build's files to a provider, start a fine-tuning job there, and follow it to its end.

Each step is safe to run again after a crash or a redelivery:
- upload: a record per (build, provider, side) holds the provider's file id once known; before
  uploading, the provider is asked for a file of the same unique name and size (an earlier
  attempt may have stored it and died before recording the id). A build is uploaded at most once.
- fine-tune: the tuneset job id is in the provider job's metadata; before creating, the provider
  is asked for a job carrying it. The provider job id is recorded and indexed for its webhooks.
- poll: reads the provider job, records status, trained tokens, model, events and checkpoints,
  and ends the tuneset job when the provider's job ends; otherwise polls again with backoff.
Transient provider trouble (connection errors, timeouts, 429, 5xx beyond the SDK's own retries)
raises `Transient`, and the task retries later; anything else fails the job with the provider's
message and code. A base URL whose host now resolves to an address the SSRF guard refuses fails
the job with `url_refused` before anything is sent (the client checks every request).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import openai

from service.core.targets import registry
from service.core.targets.base import Target
from service.jobs import Code, ErrorCode, FineTuneSpec, ProviderCode, UploadSpec
from service.providers.client import (
    FineTuneRequest,
    ProviderFileRejected,
    ProviderProfile,
    create_fine_tune,
    find_file,
    find_job,
    is_transient,
    job_status,
    make_client,
    upload_file,
    wait_processed,
)
from service.queue import FINE_TUNE_POLL_TASK, enqueue
from service.ssrf import Allowlist, UrlRefused
from service.store.blobs import BlobStore
from service.store.providers import ProviderStore
from service.store.secrets import MissingSecretKey, SecretBox
from service.times import rfc3339
from workers.context import JobContext

log = logging.getLogger("tuneset.providers")
SIDES = ("train", "validation")


class Transient(Exception):
    """The provider is unreachable or overloaded for now: try the step again later."""


class _Failed(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Step(JobContext):
    """A provider step's job: its context, the provider's client, and how a refusal ends it."""

    @property
    def provider(self) -> UploadSpec | FineTuneSpec:
        spec = self.spec
        assert isinstance(spec, UploadSpec | FineTuneSpec), f"job {self.job_id} is not a provider step"
        return spec

    def client(self) -> openai.OpenAI:
        try:
            store = ProviderStore(self.state.r, SecretBox.from_settings(self.settings))
        except MissingSecretKey as e:
            raise _Failed(ErrorCode.not_configured, str(e)) from None
        spec = self.provider
        creds = store.credentials(spec.provider_id)
        if creds is None:
            raise _Failed(ErrorCode.provider_deleted, f"the provider {spec.provider!r} no longer exists")
        profile = ProviderProfile(
            name=spec.provider,
            base_url=creds.base_url,
            api_key=creds.api_key,
            kind="azure" if creds.kind == "azure" else "openai",
            api_version=creds.api_version,
        )
        allow = Allowlist.from_settings(self.settings)
        return make_client(profile, allow=allow, max_retries=2, timeout=120.0)

    def provider_kind(self) -> str:
        """The provider profile's kind (openai, azure): which target's files it takes."""
        try:
            store = ProviderStore(self.state.r, SecretBox.from_settings(self.settings))
        except MissingSecretKey as e:
            raise _Failed(ErrorCode.not_configured, str(e)) from None
        creds = store.credentials(self.provider.provider_id)
        return "azure" if creds is not None and creds.kind == "azure" else "openai"

    def guarded(self, step: Any) -> None:
        """Run `step`; a provider refusal fails the job with its message and code, trouble retries."""
        try:
            step()
        except _Failed as e:
            self.fail(e.code, e.message)
        except ProviderFileRejected as e:
            self.fail(ProviderCode(e.code), f"the provider rejected file {e.file_id}: {e.message}")
        except UrlRefused as e:
            if is_transient(e):  # the host did not resolve: DNS may answer later
                raise Transient(e.reason) from e
            # Its host now resolves somewhere the guard refuses (DNS rebinding, a changed record):
            # nothing was sent. The reason names host and address, never the key.
            self.fail(
                ErrorCode.url_refused, f"the provider's base_url is refused by the SSRF guard: {e.reason}"
            )
        except openai.APIStatusError as e:
            if is_transient(e):
                raise Transient(f"HTTP {e.status_code}") from e
            self.fail(ProviderCode(str(e.code or f"http_{e.status_code}")), _provider_message(e))
        except Exception as e:
            if is_transient(e):
                raise Transient(type(e).__name__) from e
            raise


def _provider_message(e: openai.APIStatusError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or e.message)


def create_once(find: Callable[[], str | None], create: Callable[[], str], attempts: int = 4) -> str:
    """Create something at the provider at most once, retrying through brief trouble.

    The SDK's own retries are off for the create call: a 500 or a lost connection can come after
    the provider stored the file or job, and a blind resend would make a second one. Before every
    attempt we ask the provider whether an earlier one got through; between attempts we wait as
    its Retry-After says (at most 10 s), or back off exponentially. Longer trouble ends the task
    with `Transient`, and the task retries later without holding a worker meanwhile."""
    delay = 0.5
    for attempt in range(attempts):
        known = find()
        if known is not None:
            return known
        try:
            return create()
        except Exception as e:
            if not is_transient(e) or attempt == attempts - 1:
                raise
            time.sleep(min(_retry_after(e) or delay, 10.0))
            delay *= 2
    raise AssertionError("unreachable")


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


# -- upload ------------------------------------------------------------------------------------


def _target_of(artifact: dict[str, Any]) -> Target | None:
    """The target an artifact was written for: as the build recorded it, or (for builds recorded
    before targets) the target whose naming it has."""
    name = artifact.get("target")
    if isinstance(name, str):
        return registry.TARGETS.get(name)
    return registry.owner(str(artifact["name"]))


def _parts(build: dict[str, Any], side: str, provider_kind: str) -> list[dict[str, Any]]:
    """The build's files of one side for this provider, in order: those of the one target that
    uploads to it (`registry.upload_target`), never another target's (a `together/train.jsonl`
    is not OpenAI's format, whatever its name)."""
    artifacts = [a for a in (build.get("result") or {}).get("artifacts") or [] if isinstance(a, dict)]
    owners = {str(a["name"]): _target_of(a) for a in artifacts}
    built = sorted({t.name for t in owners.values() if t is not None})
    target = registry.upload_target(built, provider_kind)
    if target is None:
        return []
    mine = [a for a in artifacts if owners[str(a["name"])] is target]
    return sorted(
        (a for a in mine if a.get("side", _side_of(str(a["name"]), target)) == side),
        key=lambda a: str(a["name"]),
    )


def _side_of(name: str, target: Target) -> str:
    rest = name.removeprefix(target.folder())
    return "train" if rest.startswith("train") else "validation"


def _assemble(blobs: BlobStore, parts: list[dict[str, Any]], path: Path) -> None:
    """One file from the side's parts: the provider trains on one file (Uploads take up to 8 GB)."""
    with path.open("wb") as out:
        for part in parts:
            for chunk in blobs.open_chunks(part["key"]):
                out.write(chunk)


def run_upload(job_id: str) -> None:
    step = _Step(job_id)
    if not step.live:
        return
    step.start("uploading")
    step.guarded(lambda: _upload(step))


def _upload(step: _Step) -> None:
    jobs, settings, spec = step.jobs, step.settings, step.provider
    build = jobs.get(spec.build_job) or {}
    if build.get("status") != "succeeded":
        raise _Failed(ErrorCode.build_not_succeeded, f"the build job {spec.build_job} has not succeeded")
    client = step.client()
    files: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="tuneset-upload-"))
    kind = step.provider_kind()
    sides = {side: parts for side in SIDES if (parts := _parts(build, side, kind))}
    try:
        for side, parts in sides.items():
            if step.cancel_if_asked():
                return
            files[side] = _upload_side(step, client, step.blobs, parts, side, work)
            jobs.update_result(step.job_id, provider=spec.provider, files=files)
            jobs.progress(step.job_id, f"uploaded {side}", len(files), len(sides))
        for side, file_id in files.items():
            jobs.progress(step.job_id, f"processing {side}", 0, 0)
            wait_processed(client, file_id, settings.provider_processing_timeout_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step.succeed({"provider": spec.provider, "files": files, "build_job_id": spec.build_job})


def _upload_side(
    step: _Step, client: openai.OpenAI, blobs: BlobStore, parts: list[dict[str, Any]], side: str, work: Path
) -> str:
    spec = step.provider
    known = step.jobs.uploaded_file(spec.build_job, spec.provider_id, side)
    if known:
        return known
    size = sum(int(p["size"]) for p in parts)
    filename = f"tuneset-{spec.build_job}-{side}.jsonl"
    path = work / filename

    def find() -> str | None:  # stored by an attempt whose answer was lost, or that died after it
        found = find_file(client, filename, size)
        return found.id if found is not None else None

    def create() -> str:
        if not path.exists():
            _assemble(blobs, parts, path)
        return upload_file(
            client.with_options(max_retries=0),
            path,
            filename,
            single_file_limit=step.settings.provider_single_file_bytes,
            part_size=step.settings.provider_part_bytes,
        )

    with step.jobs.uploading(spec.build_job, spec.provider_id, side, step.settings.lease_ttl_s) as mine:
        if not mine:  # a run of this step that is still alive is uploading it: ask again later
            raise Transient(f"the {side} file is being uploaded by another run of this step")
        file_id = step.jobs.uploaded_file(spec.build_job, spec.provider_id, side) or create_once(find, create)
        step.jobs.record_upload(spec.build_job, spec.provider_id, side, file_id, filename, size)
    log.info("uploaded %s of build %s as %s", side, spec.build_job, file_id)
    return file_id


# -- fine-tune ---------------------------------------------------------------------------------


def run_fine_tune(job_id: str) -> None:
    step = _Step(job_id)
    if not step.live:
        return
    step.start("creating")
    step.guarded(lambda: _create(step))


def _create(step: _Step) -> None:
    jobs, spec = step.jobs, step.spec
    assert isinstance(spec, FineTuneSpec)
    upload = jobs.get(spec.upload_job) or {}
    if upload.get("status") != "succeeded":
        raise _Failed(ErrorCode.upload_not_succeeded, f"the upload job {spec.upload_job} has not succeeded")
    files = (upload.get("result") or {}).get("files") or {}
    with jobs.creating_provider_job(step.job_id, step.settings.lease_ttl_s) as mine:
        if not mine:  # a run of this step that is still alive is creating it: ask again later
            raise Transient("the provider's fine-tuning job is being created by another run of this step")
        provider_job_id = jobs.provider_job(step.job_id) or _create_provider_job(step, spec, files)
    jobs.update_result(step.job_id, provider=spec.provider, provider_job_id=provider_job_id)
    jobs.progress(step.job_id, "validating_files", 0, 0)
    enqueue(step.settings, FINE_TUNE_POLL_TASK, [step.job_id, 0])


def _create_provider_job(step: _Step, spec: FineTuneSpec, files: dict[str, Any]) -> str:
    """Find the provider job a lost run of this step created (by its metadata), or create it."""
    client = step.client()

    def find() -> str | None:
        existing = find_job(client, "tuneset_job", step.job_id)
        return existing.id if existing is not None else None

    def create() -> str:
        options = dict(spec.options)
        hyper = options.pop("hyperparameters", None) or {}
        metadata = {
            **(options.pop("metadata", None) or {}),
            "tuneset_job": step.job_id,
            "tuneset_build": spec.build_job,
        }
        request = msgspec.convert(
            {
                **options,
                **{k: v for k, v in hyper.items() if v != "auto"},
                "training_file": files["train"],
                "validation_file": files.get("validation"),
                "metadata": metadata,
            },
            FineTuneRequest,
        )
        return create_fine_tune(client.with_options(max_retries=0), request).id

    provider_job_id = create_once(find, create)
    step.jobs.record_provider_job(step.job_id, spec.provider_id, provider_job_id)
    return provider_job_id


def poll_fine_tune(job_id: str) -> bool:
    """Read the provider job once and record it; True when the tuneset job has ended."""
    step = _Step(job_id)
    if not step.live:
        return True
    provider_job_id = step.jobs.provider_job(job_id)
    if not provider_job_id:
        return False  # not created yet: the create step enqueues the first poll

    def read() -> None:
        assert provider_job_id is not None
        client = step.client()
        if step.jobs.cancel_requested(job_id):
            client.fine_tuning.jobs.cancel(provider_job_id)
        snap = job_status(client, provider_job_id)
        record: dict[str, Any] = {
            "provider": step.provider.provider,
            "provider_job_id": snap.id,
            "provider_status": snap.status,
            "trained_tokens": snap.trained_tokens,
            "fine_tuned_model": snap.fine_tuned_model,
            "events": [  # the provider's epoch seconds, in the API's one format
                {**msgspec.to_builtins(e), "created_at": rfc3339(e.created_at)} for e in snap.events[-100:]
            ],
            "checkpoints": msgspec.to_builtins(snap.checkpoints),
        }
        step.jobs.update_result(job_id, **record)
        step.jobs.progress(job_id, snap.status, 0, 0)
        if not snap.done:
            return
        result = {**((step.jobs.get(job_id) or {}).get("result") or {}), **record}
        if snap.status == "succeeded":
            step.succeed(result)
        elif snap.status == "cancelled":
            step.jobs.cancel(job_id, result=result)
        elif snap.error is not None:
            step.fail(ProviderCode(snap.error.code), snap.error.message, result=result)
        else:
            step.fail(ErrorCode.fine_tune_failed, "the provider's fine-tuning job failed", result=result)

    step.guarded(read)  # ends the job when the provider's has ended, or fails it on a refusal
    return (step.jobs.get(job_id) or {}).get("status") not in ("queued", "running")
