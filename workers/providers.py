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

from service.jobs.leases import exclusive
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
from service.settings import Settings, get_settings
from service.ssrf import Allowlist, UrlRefused
from service.store.blobs import BlobStore, blob_store_from_settings
from service.store.providers import ProviderStore
from service.store.secrets import MissingSecretKey, SecretBox
from service.store.state import TERMINAL, State

log = logging.getLogger("tuneset.providers")
SIDES = ("train", "validation")


class Transient(Exception):
    """The provider is unreachable or overloaded for now: try the step again later."""


class _Failed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Step:
    def __init__(self, job_id: str, settings: Settings | None) -> None:
        self.settings = settings or get_settings()
        self.state = State.from_url(self.settings.redis_url)
        self.job_id = job_id
        self.job = self.state.job(job_id) or {}
        self.spec: dict[str, Any] = self.job.get("spec") or {}

    @property
    def live(self) -> bool:
        return bool(self.job) and self.job["status"] not in TERMINAL

    def client(self) -> openai.OpenAI:
        try:
            store = ProviderStore(self.state.r, SecretBox.from_settings(self.settings))
        except MissingSecretKey as e:
            raise _Failed("not_configured", str(e)) from None
        creds = store.credentials(self.spec["provider_id"])
        if creds is None:
            raise _Failed("provider_deleted", f"the provider {self.spec.get('provider')!r} no longer exists")
        profile = ProviderProfile(
            name=str(self.spec.get("provider")),
            base_url=creds.base_url,
            api_key=creds.api_key,
            kind="azure" if creds.kind == "azure" else "openai",
            api_version=creds.api_version,
        )
        allow = Allowlist.from_settings(self.settings)
        return make_client(profile, allow=allow, max_retries=2, timeout=120.0)

    def fail(self, code: str, message: str) -> None:
        self.state.transition(
            self.job_id,
            {"queued", "running"},
            "failed",
            stage="failed",
            error={"code": code, "message": message},
        )

    def guarded(self, step: Any) -> None:
        """Run `step`; a provider refusal fails the job with its message and code, trouble retries."""
        try:
            step()
        except _Failed as e:
            self.fail(e.code, e.message)
        except ProviderFileRejected as e:
            self.fail(e.code, f"the provider rejected file {e.file_id}: {e.message}")
        except UrlRefused as e:
            if is_transient(e):  # the host did not resolve: DNS may answer later
                raise Transient(e.reason) from e
            # Its host now resolves somewhere the guard refuses (DNS rebinding, a changed record):
            # nothing was sent. The reason names host and address, never the key.
            self.fail("url_refused", f"the provider's base_url is refused by the SSRF guard: {e.reason}")
        except openai.APIStatusError as e:
            if is_transient(e):
                raise Transient(f"HTTP {e.status_code}") from e
            self.fail(str(e.code or f"http_{e.status_code}"), _provider_message(e))
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


def _parts(build: dict[str, Any], side: str) -> list[dict[str, Any]]:
    """The build's artifacts of one side, in order: `train.jsonl` or `train-00000-of-00003.jsonl`, ..."""
    artifacts = (build.get("result") or {}).get("artifacts") or []
    return sorted(
        (a for a in artifacts if a["name"] == f"{side}.jsonl" or a["name"].startswith(f"{side}-")),
        key=lambda a: str(a["name"]),
    )


def _assemble(blobs: BlobStore, parts: list[dict[str, Any]], path: Path) -> None:
    """One file from the side's parts: the provider trains on one file (Uploads take up to 8 GB)."""
    with path.open("wb") as out:
        for part in parts:
            for chunk in blobs.open_chunks(part["key"]):
                out.write(chunk)


def run_upload(job_id: str, settings: Settings | None = None) -> None:
    step = _Step(job_id, settings)
    if not step.live:
        return
    step.state.transition(job_id, {"queued"}, "running", stage="uploading")
    step.guarded(lambda: _upload(step))


def _upload(step: _Step) -> None:
    state, settings, spec = step.state, step.settings, step.spec
    build = state.job(spec["build_job"]) or {}
    if build.get("status") != "succeeded":
        raise _Failed("build_not_succeeded", f"the build job {spec['build_job']} has not succeeded")
    client = step.client()
    blobs = blob_store_from_settings(settings)
    files: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="tuneset-upload-"))
    sides = {side: parts for side in SIDES if (parts := _parts(build, side))}
    try:
        for side, parts in sides.items():
            if step.state.cancel_requested(step.job_id):
                state.transition(step.job_id, {"running"}, "cancelled", stage="cancelled")
                return
            files[side] = _upload_side(step, client, blobs, parts, side, work)
            state.update_result(step.job_id, provider=spec.get("provider"), files=files)
            state.progress(step.job_id, f"uploaded {side}", len(files), len(sides))
        for side, file_id in files.items():
            state.progress(step.job_id, f"processing {side}", 0, 0)
            wait_processed(client, file_id, settings.provider_processing_timeout_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"provider": spec.get("provider"), "files": files, "build_job_id": spec["build_job"]}
    state.transition(step.job_id, {"running"}, "succeeded", stage="done", result=result)


def _upload_side(
    step: _Step, client: openai.OpenAI, blobs: BlobStore, parts: list[dict[str, Any]], side: str, work: Path
) -> str:
    record = f"tuneset:upload:{step.spec['build_job']}:{step.spec['provider_id']}:{side}"
    known = step.state.r.hget(record, "file_id")
    if known:
        return str(known)
    size = sum(int(p["size"]) for p in parts)
    filename = f"tuneset-{step.spec['build_job']}-{side}.jsonl"
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

    with exclusive(step.state.r, record + ":creating", step.settings.lease_ttl_s) as mine:
        if not mine:  # a run of this step that is still alive is uploading it: ask again later
            raise Transient(f"the {side} file is being uploaded by another run of this step")
        file_id = str(step.state.r.hget(record, "file_id") or "") or create_once(find, create)
        step.state.r.hset(record, mapping={"file_id": file_id, "filename": filename, "bytes": size})
    log.info("uploaded %s of build %s as %s", side, step.spec["build_job"], file_id)
    return file_id


# -- fine-tune ---------------------------------------------------------------------------------


def run_fine_tune(job_id: str, settings: Settings | None = None) -> None:
    step = _Step(job_id, settings)
    if not step.live:
        return
    step.state.transition(job_id, {"queued"}, "running", stage="creating")
    step.guarded(lambda: _create(step))


def _create(step: _Step) -> None:
    state, spec = step.state, step.spec
    upload = state.job(spec["upload_job"]) or {}
    if upload.get("status") != "succeeded":
        raise _Failed("upload_not_succeeded", f"the upload job {spec['upload_job']} has not succeeded")
    files = (upload.get("result") or {}).get("files") or {}
    client = step.client()
    provider_job_id = state.r.hget(f"tuneset:job:{step.job_id}", "provider_job_id")
    if not provider_job_id:

        def find() -> str | None:
            existing = find_job(client, "tuneset_job", step.job_id)
            return existing.id if existing is not None else None

        def create() -> str:
            options = dict(spec.get("options") or {})
            hyper = options.pop("hyperparameters", None) or {}
            metadata = {
                **(options.pop("metadata", None) or {}),
                "tuneset_job": step.job_id,
                "tuneset_build": str(spec["build_job"]),
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
        pipe = state.r.pipeline()
        pipe.hset(f"tuneset:job:{step.job_id}", "provider_job_id", provider_job_id)
        pipe.set(f"tuneset:ftjob:{spec['provider_id']}:{provider_job_id}", step.job_id)
        pipe.execute()
    state.update_result(step.job_id, provider=spec.get("provider"), provider_job_id=str(provider_job_id))
    state.progress(step.job_id, "validating_files", 0, 0)
    enqueue(step.settings, FINE_TUNE_POLL_TASK, [step.job_id, 0], queue=step.settings.io_queue)


def poll_fine_tune(job_id: str, settings: Settings | None = None) -> bool:
    """Read the provider job once and record it; True when the tuneset job has ended."""
    step = _Step(job_id, settings)
    if not step.live:
        return True
    provider_job_id = step.state.r.hget(f"tuneset:job:{job_id}", "provider_job_id")
    if not provider_job_id:
        return False  # not created yet: the create step enqueues the first poll

    def read() -> None:
        client = step.client()
        if step.state.cancel_requested(job_id):
            client.fine_tuning.jobs.cancel(str(provider_job_id))
        snap = job_status(client, str(provider_job_id))
        record: dict[str, Any] = {
            "provider": step.spec.get("provider"),
            "provider_job_id": snap.id,
            "provider_status": snap.status,
            "trained_tokens": snap.trained_tokens,
            "fine_tuned_model": snap.fine_tuned_model,
            "events": msgspec.to_builtins(snap.events[-100:]),
            "checkpoints": msgspec.to_builtins(snap.checkpoints),
        }
        step.state.update_result(job_id, **record)
        step.state.progress(job_id, snap.status, 0, 0)
        if not snap.done:
            return
        result = {**((step.state.job(job_id) or {}).get("result") or {}), **record}
        if snap.status == "succeeded":
            step.state.transition(job_id, {"running"}, "succeeded", stage="done", result=result)
        elif snap.status == "cancelled":
            step.state.transition(job_id, {"running"}, "cancelled", stage="cancelled", result=result)
        else:
            error = snap.error
            step.state.transition(
                job_id,
                {"running"},
                "failed",
                stage="failed",
                result=result,
                error={
                    "code": error.code if error else "fine_tune_failed",
                    "message": error.message if error else "the provider's fine-tuning job failed",
                },
            )

    step.guarded(read)  # ends the job when the provider's has ended, or fails it on a refusal
    return (step.state.job(job_id) or {}).get("status") not in ("queued", "running")
