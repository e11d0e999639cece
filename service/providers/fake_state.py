"""The fake provider's state: files, uploads, fine-tuning jobs and injected faults, in memory.

Everything here is synchronous and runs on the server's event loop, so it needs no locks. Time
moves jobs on: `advance(now)` applies every step whose time has come, so a read sees the same
state whether or not the background ticker ran in between. Provider rules live here (limits,
error codes); job parameters are checked by `fake_jobs`, file contents by `fake_validate`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from service.providers.fake_http import ApiError, new_id
from service.providers.fake_jobs import (
    MAX_SEED,
    check_metadata,
    check_suffix,
    default_epochs,
    epoch_loss,
    format_failure,
    method_wire,
    parse_method,
    results_csv,
)
from service.providers.fake_validate import FileCheck, check_file
from service.providers.fake_wire import (
    Checkpoint,
    Delivery,
    FakeConfig,
    Fault,
    FileObject,
    FineTuningJob,
    JobError,
    JobEvent,
    Page,
    RequestLog,
    Upload,
    UploadPart,
)

PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
JSONL_MIME_TYPES = frozenset({"text/jsonl", "application/jsonl", "application/x-ndjson", "application/json"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
UPLOAD_TTL_S = 3600
KEPT_CHECKPOINTS = 3


@dataclass
class StoredFile:
    record: FileObject
    content: bytes
    check: FileCheck
    ready_at: float
    md5: str
    sha256: str


@dataclass
class StoredUpload:
    record: Upload
    mime_type: str
    parts: dict[str, bytes] = field(default_factory=dict)
    file_id: str | None = None
    md5_given: str | None = None  # what the client sent on complete, for tests to see


@dataclass
class StoredJob:
    wire: FineTuningJob
    plan: list[tuple[float, str, int]]  # (due, step, epoch), in order
    resolved: dict[str, Any]
    epochs: int
    steps_per_epoch: int
    tokens_per_epoch: int
    failure: JobError | None
    events: list[JobEvent] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def event(self, at: float, message: str, *, level: Literal["info", "warn", "error"] = "info") -> None:
        self.events.append(JobEvent(id=new_id("ftevent-"), created_at=int(at), level=level, message=message))


class FakeState:
    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, StoredUpload] = {}
        self.jobs: dict[str, StoredJob] = {}
        self.faults: list[Fault] = []
        self.requests: deque[RequestLog] = deque(maxlen=5000)
        self.deliveries: list[Delivery] = []

    def reset(self) -> None:
        self.files.clear()
        self.uploads.clear()
        self.jobs.clear()
        self.faults.clear()
        self.requests.clear()
        self.deliveries.clear()

    # -- files ---------------------------------------------------------------------------------

    def add_file(
        self, filename: str, purpose: str, content: bytes, now: float, *, checked: bool = False
    ) -> StoredFile:
        """Store a file. `checked`: its rules were applied already (an Upload's, whose limit is
        larger, or the provider's own result files)."""
        cfg = self.config
        if not checked:
            self._check_new_file(filename, purpose, len(content))
        check = (
            check_file(content, min_examples=cfg.min_examples)
            if purpose == "fine-tune"
            else FileCheck(format=None, examples=0, tokens=0)
        )
        delay = cfg.step_seconds if cfg.processing_seconds is None else cfg.processing_seconds
        stored = StoredFile(
            record=FileObject(
                id=new_id("file-"),
                bytes=len(content),
                created_at=int(now),
                filename=filename,
                purpose=purpose,
            ),
            content=content,
            check=check,
            ready_at=now + delay,
            md5=hashlib.md5(content).hexdigest(),
            sha256=hashlib.sha256(content).hexdigest(),
        )
        self.files[stored.record.id] = stored
        self._process(stored, now)
        return stored

    def _check_new_file(self, filename: str, purpose: str, size: int) -> None:
        if purpose not in PURPOSES:
            raise ApiError(400, f"Invalid purpose: '{purpose}'.", param="purpose", code="invalid_value")
        if size > self.config.max_file_bytes:
            raise ApiError(
                413,
                f"File is too large: {size} bytes; the maximum is {self.config.max_file_bytes} bytes.",
                param="file",
                code="file_too_large",
            )
        if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")

    def _process(self, stored: StoredFile, now: float) -> None:
        if stored.record.status == "uploaded" and now >= stored.ready_at:
            if stored.check.error is None:
                stored.record.status = "processed"
            else:
                stored.record.status = "error"
                stored.record.status_details = stored.check.error

    def file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def delete_file(self, file_id: str) -> None:
        self.file(file_id)
        del self.files[file_id]

    def list_files(self, purpose: str | None, order: str, after: str | None, limit: int) -> Page:
        files = [f.record for f in self.files.values() if purpose is None or f.record.purpose == purpose]
        if order != "asc":
            files.reverse()
        return paginate(files, after, limit)

    # -- uploads -------------------------------------------------------------------------------

    def create_upload(self, body: dict[str, Any], now: float) -> StoredUpload:
        size, filename, mime, purpose = (body.get(k) for k in ("bytes", "filename", "mime_type", "purpose"))
        if not isinstance(size, int) or isinstance(size, bool):
            raise ApiError(400, "Missing or invalid parameter: 'bytes'.", param="bytes")
        if not isinstance(filename, str) or not filename:
            raise ApiError(400, "Missing or invalid parameter: 'filename'.", param="filename")
        if not isinstance(mime, str):
            raise ApiError(400, "Missing or invalid parameter: 'mime_type'.", param="mime_type")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise ApiError(400, f"Invalid purpose: '{purpose}'.", param="purpose", code="invalid_value")
        if not 0 < size <= self.config.max_upload_bytes:
            raise ApiError(
                400,
                f"Invalid 'bytes': must be between 1 and {self.config.max_upload_bytes}.",
                param="bytes",
                code="invalid_value",
            )
        if purpose == "fine-tune":
            if not filename.lower().endswith(".jsonl"):
                raise ApiError(
                    400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="filename"
                )
            if mime not in JSONL_MIME_TYPES:
                raise ApiError(
                    400,
                    f"Invalid mime_type '{mime}' for purpose 'fine-tune'; expected text/jsonl.",
                    param="mime_type",
                )
        record = Upload(
            id=new_id("upload_"),
            bytes=size,
            created_at=int(now),
            expires_at=int(now) + UPLOAD_TTL_S,
            filename=filename,
            purpose=purpose,
        )
        stored = StoredUpload(record=record, mime_type=mime)
        self.uploads[record.id] = stored
        return stored

    def upload(self, upload_id: str, now: float, *, pending: bool = False) -> StoredUpload:
        stored = self.uploads.get(upload_id)
        if stored is None:
            raise ApiError(404, f"No such Upload object: {upload_id}", param="upload_id")
        if stored.record.status == "pending" and now > stored.record.expires_at:
            stored.record.status = "expired"
            stored.parts.clear()
        if pending and stored.record.status != "pending":
            raise ApiError(
                400,
                f"Upload {upload_id} is {stored.record.status}; it accepts no more changes.",
                param="upload_id",
            )
        return stored

    def add_part(self, upload_id: str, data: bytes, now: float) -> UploadPart:
        stored = self.upload(upload_id, now, pending=True)
        if len(data) > self.config.max_part_bytes:
            raise ApiError(
                413,
                f"Part is too large: {len(data)} bytes; the maximum is {self.config.max_part_bytes} bytes.",
                param="data",
                code="part_too_large",
            )
        part = UploadPart(id=new_id("part_"), created_at=int(now), upload_id=upload_id)
        stored.parts[part.id] = data
        return part

    def complete_upload(self, upload_id: str, body: dict[str, Any], now: float) -> StoredUpload:
        stored = self.upload(upload_id, now, pending=True)
        part_ids = body.get("part_ids")
        if not isinstance(part_ids, list) or not part_ids or not all(isinstance(p, str) for p in part_ids):
            raise ApiError(400, "Missing required parameter: 'part_ids'.", param="part_ids")
        if len(set(part_ids)) != len(part_ids):
            raise ApiError(400, "Invalid 'part_ids': a part is listed twice.", param="part_ids")
        unknown = [p for p in part_ids if p not in stored.parts]
        if unknown:
            raise ApiError(
                400,
                f"Invalid 'part_ids': {unknown[0]} is not a part of upload {upload_id}.",
                param="part_ids",
            )
        content = b"".join(stored.parts[p] for p in part_ids)
        if len(content) != stored.record.bytes:
            raise ApiError(
                400,
                f"The number of bytes uploaded ({len(content)}) does not match the number of bytes "
                f"specified when the upload was created ({stored.record.bytes}).",
                param="part_ids",
                code="bytes_mismatch",
            )
        md5 = body.get("md5")
        if md5 is not None:
            actual = hashlib.md5(content).hexdigest()
            if not isinstance(md5, str) or md5.lower() != actual:
                raise ApiError(
                    400,
                    f"The md5 checksum of the uploaded bytes ({actual}) "
                    f"does not match the md5 provided ({md5}).",
                    param="md5",
                    code="md5_mismatch",
                )
        stored.md5_given = md5
        file = self.add_file(stored.record.filename, stored.record.purpose, content, now, checked=True)
        stored.record.status = "completed"
        stored.file_id = file.record.id
        stored.parts.clear()
        return stored

    def cancel_upload(self, upload_id: str, now: float) -> StoredUpload:
        stored = self.upload(upload_id, now, pending=True)
        stored.record.status = "cancelled"
        stored.parts.clear()
        return stored

    def upload_view(self, stored: StoredUpload) -> Upload:
        file = self.files.get(stored.file_id) if stored.file_id else None
        return msgspec.structs.replace(stored.record, file=file.record if file else None)

    # -- fine-tuning jobs ----------------------------------------------------------------------

    def create_job(self, body: dict[str, Any], now: float) -> StoredJob:
        cfg = self.config
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        if cfg.models is not None and model not in cfg.models and not model.startswith("ft:"):
            raise ApiError(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        training = self._job_file(body.get("training_file"), "training_file")
        validation_id = body.get("validation_file")
        validation = None if validation_id is None else self._job_file(validation_id, "validation_file")
        suffix = check_suffix(body.get("suffix"))
        seed = body.get("seed")
        if seed is None:
            seed = random.randint(0, MAX_SEED)
        elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise ApiError(
                400,
                f"Invalid 'seed': must be an integer between 0 and {MAX_SEED}.",
                param="seed",
                code="invalid_value",
            )
        metadata = check_metadata(body.get("metadata"))
        kind, hyper = parse_method(body)
        n = training.check.examples
        epochs = hyper["n_epochs"] if isinstance(hyper["n_epochs"], int) else default_epochs(n)
        batch = (
            hyper["batch_size"]
            if isinstance(hyper["batch_size"], int)
            else max(1, min(256, math.ceil(n / 500)))
        )
        resolved: dict[str, Any] = {
            "n_epochs": epochs,
            "batch_size": batch,
            "learning_rate_multiplier": hyper["learning_rate_multiplier"]
            if hyper["learning_rate_multiplier"] != "auto"
            else 1.8,
        }
        if kind == "dpo":
            resolved["beta"] = hyper["beta"] if hyper["beta"] != "auto" else 0.1
        wire = FineTuningJob(
            id=new_id("ftjob-"),
            created_at=int(now),
            model=model,
            training_file=training.record.id,
            validation_file=validation.record.id if validation else None,
            seed=seed,
            hyperparameters={k: hyper[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            method=method_wire(kind, hyper),
            metadata=metadata,
            user_provided_suffix=suffix,
            organization_id="org-" + cfg.organization,
        )
        failure = format_failure(kind, training.record.id, training.check.format, "training_file")
        if failure is None and validation is not None:
            failure = format_failure(kind, validation.record.id, validation.check.format, "validation_file")
        step = cfg.step_seconds
        plan: list[tuple[float, str, int]] = [(now + step, "validated", 0)]
        if failure is None:
            plan.append((now + 2 * step, "started", 0))
            plan += [(now + (2 + e) * step, "epoch", e) for e in range(1, epochs + 1)]
            plan.append((now + (3 + epochs) * step, "succeeded", 0))
        job = StoredJob(
            wire=wire,
            plan=plan,
            resolved=resolved,
            epochs=epochs,
            steps_per_epoch=max(1, math.ceil(n / batch)),
            tokens_per_epoch=training.check.tokens,
            failure=failure,
        )
        job.event(now, f"Created fine-tuning job: {wire.id}")
        validating = f"Validating training file: {wire.training_file}"
        if wire.validation_file:
            validating += f" and validation file: {wire.validation_file}"
        job.event(now, validating)
        self.jobs[wire.id] = job
        return job

    def _job_file(self, file_id: object, param: str) -> StoredFile:
        if not isinstance(file_id, str) or not file_id:
            raise ApiError(
                400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            )
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(400, f"invalid {param}: {file_id}", param=param, code=f"invalid_{param}")
        if stored.record.purpose != "fine-tune":
            raise ApiError(
                400,
                f"File {file_id} has purpose '{stored.record.purpose}'; "
                "fine-tuning needs purpose 'fine-tune'.",
                param=param,
                code=f"invalid_{param}",
            )
        if stored.record.status == "uploaded":
            raise ApiError(
                400,
                f"File {file_id} is still being processed and is not ready to be used for fine-tuning. "
                "Please try again later.",
                param=param,
                code="file_not_ready",
            )
        if stored.record.status == "error":
            raise ApiError(
                400,
                f"File {file_id} failed processing: {stored.record.status_details}",
                param=param,
                code=f"invalid_{param}",
            )
        return stored

    def job(self, job_id: str) -> StoredJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return job

    def list_jobs(self, metadata: dict[str, str], after: str | None, limit: int) -> Page:
        jobs = [
            j.wire
            for j in reversed(self.jobs.values())
            if all((j.wire.metadata or {}).get(k) == v for k, v in metadata.items())
        ]
        return paginate(jobs, after, limit)

    def cancel_job(self, job_id: str, now: float) -> StoredJob:
        job = self.job(job_id)
        if job.wire.status in TERMINAL:
            raise ApiError(400, f"Job {job_id} has already {job.wire.status} and cannot be cancelled.")
        job.plan.clear()
        job.wire.status = "cancelled"
        job.wire.finished_at = int(now)
        job.wire.estimated_finish = None
        job.event(now, "Fine-tuning job cancelled")
        return job

    def advance(self, now: float) -> list[StoredJob]:
        """Apply every step that is due; returns the jobs that reached a terminal state."""
        for stored in self.files.values():
            self._process(stored, now)
        ended = []
        for job in self.jobs.values():
            while job.plan and job.plan[0][0] <= now:
                due, step, epoch = job.plan.pop(0)
                self._apply(job, due, step, epoch)
                if job.wire.status in TERMINAL:
                    job.plan.clear()
                    ended.append(job)
        return ended

    def _apply(self, job: StoredJob, due: float, step: str, epoch: int) -> None:
        wire = job.wire
        if step == "validated":
            if job.failure is not None:
                wire.status = "failed"
                wire.error = job.failure
                wire.finished_at = int(due)
                job.event(due, job.failure.message, level="error")
                return
            wire.status = "queued"
            wire.hyperparameters = {k: v for k, v in job.resolved.items() if k != "beta"}
            wire.method = method_wire(wire.method.type, job.resolved)
            job.event(due, "Files validated, moving job to queued state")
        elif step == "started":
            wire.status = "running"
            wire.estimated_finish = int(job.plan[-1][0]) + 1 if job.plan else None
            job.event(due, "Fine-tuning job started")
        elif step == "epoch":
            total = job.epochs * job.steps_per_epoch
            at_step = epoch * job.steps_per_epoch
            loss = epoch_loss(epoch)
            metrics = {
                "step": float(at_step),
                "train_loss": loss,
                "train_mean_token_accuracy": round(1 - loss / 3, 4),
            }
            if wire.validation_file:
                metrics |= {
                    "valid_loss": round(loss * 1.1, 4),
                    "valid_mean_token_accuracy": round(1 - loss / 2.8, 4),
                }
            job.events.append(
                JobEvent(
                    id=new_id("ftevent-"),
                    created_at=int(due),
                    level="info",
                    message=f"Step {at_step}/{total}: training loss={loss:.4f}",
                    type="metrics",
                    data={**metrics, "total_steps": total},
                )
            )
            job.checkpoints.append(
                Checkpoint(
                    id=new_id("ftckpt_"),
                    created_at=int(due),
                    fine_tuned_model_checkpoint=f"{self._model_name(wire)}:ckpt-step-{at_step}",
                    fine_tuning_job_id=wire.id,
                    step_number=at_step,
                    metrics=metrics,
                )
            )
            del job.checkpoints[:-KEPT_CHECKPOINTS]  # the provider keeps the last three epochs
            job.event(due, f"Checkpoint created at step {at_step}")
        elif step == "succeeded":
            wire.status = "succeeded"
            wire.fine_tuned_model = self._model_name(wire)
            wire.trained_tokens = job.tokens_per_epoch * job.epochs
            wire.finished_at = int(due)
            wire.estimated_finish = None
            results = self.add_file(
                "step_metrics.csv",
                "fine-tune-results",
                results_csv(job.epochs, job.steps_per_epoch).encode(),
                due,
                checked=True,
            )
            results.record.status = "processed"
            wire.result_files = [results.record.id]
            job.event(due, f"New fine-tuned model created: {wire.fine_tuned_model}")
            job.event(due, "The job has successfully completed")

    def _model_name(self, wire: FineTuningJob) -> str:
        return f"ft:{wire.model}:{self.config.organization}:{wire.user_provided_suffix or ''}:{wire.id[-8:]}"

    # -- faults --------------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        if fault.status is None and fault.delay_s is None and not fault.drop:
            raise ApiError(400, "A fault needs at least one of status, delay_s or drop.")
        if fault.status is not None and not 400 <= fault.status <= 599:
            raise ApiError(400, "A fault's status must be between 400 and 599.")
        fault.id = new_id("fault_", 8)
        fault.hits = 0
        self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times is not None and fault.hits >= fault.times:
                continue
            want_method, _, want_path = fault.match.partition(" ")
            if not want_path:
                want_method, want_path = "*", want_method
            if want_method not in ("*", method.upper()) or not fnmatch.fnmatchcase(path, want_path):
                continue
            fault.hits += 1
            return fault
        return None

    # -- admin ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        cfg = msgspec.structs.asdict(self.config)
        cfg["api_key"] = None if self.config.api_key is None else "***"
        cfg["webhook_secret"] = None if self.config.webhook_secret is None else "***"
        return {
            "files": [
                {
                    **msgspec.structs.asdict(f.record),
                    "md5": f.md5,
                    "sha256": f.sha256,
                    "examples": f.check.examples,
                }
                for f in self.files.values()
            ],
            "uploads": [
                {
                    **msgspec.structs.asdict(u.record),
                    "file": None,
                    "file_id": u.file_id,
                    "mime_type": u.mime_type,
                    "md5_given": u.md5_given,
                    "parts": [{"id": k, "bytes": len(v)} for k, v in u.parts.items()],
                }
                for u in self.uploads.values()
            ],
            "jobs": [j.wire for j in self.jobs.values()],
            "faults": self.faults,
            "requests": list(self.requests),
            "webhooks": self.deliveries,
            "config": cfg,
        }


def paginate(items: list[Any], after: str | None, limit: int) -> Page:
    start = 0
    if after:
        ids = [item.id for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    return Page(data=items[start : start + limit], has_more=start + limit < len(items))
