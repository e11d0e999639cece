"""A build: validate, repair and account a whole dataset with the core, then store the artifacts.

Safe to run twice for one job (a re-delivered task after a worker died): a job already in a
terminal state is left alone, a `running` one is redone from the start (its artifacts are
written under fixed names with the same bytes, so nothing is duplicated), and a cap on
attempts turns a task that keeps killing its worker into a failed job instead of a loop.
This issue runs one task per build; the shape (read batches → process → write artifacts →
finish) is what the sharded pipeline will split.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import redis

from service.core.conversation import chat_of
from service.core.formats import Format, read_records
from service.core.models import ModelError
from service.core.pipeline import PolicyError, Processor, Recipe, Summary
from service.settings import Settings, get_settings
from service.store.blobs import BlobStore, blob_store_from_settings
from service.store.state import TERMINAL, State

MAX_ATTEMPTS = 3
PROGRESS_EVERY = 500
_json = msgspec.json.Encoder()


class Cancelled(Exception):
    """The caller asked to cancel; stop at the next boundary."""


class Resilient:
    """The job state as a build sees it while Redis may restart under it (shared/reliability.md):
    progress and cancel checks are best effort, and the final transition is retried until Redis
    answers again, so the job still reaches its one terminal state."""

    def __init__(self, state: State, patience_s: float = 120) -> None:
        self.state = state
        self.patience_s = patience_s

    def progress(self, job_id: str, stage: str, done: int, total: int) -> None:
        with contextlib.suppress(redis.RedisError):
            self.state.progress(job_id, stage, done, total)

    def cancel_requested(self, job_id: str) -> bool:
        try:
            return self.state.cancel_requested(job_id)
        except redis.RedisError:
            return False

    def finish(self, job_id: str, allowed: set[str], to: str, **fields: Any) -> bool:
        deadline = time.monotonic() + self.patience_s
        delay = 0.2
        while True:
            try:
                return self.state.transition(job_id, allowed, to, **fields)
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def artifact_key(tenant: str, job_id: str, name: str) -> str:
    return f"{tenant}/jobs/{job_id}/{name}"


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from (line + b"\n" for line in lines)
    if rest:
        yield rest


def run_build(
    job_id: str, settings: Settings | None = None, state: State | None = None, blobs: BlobStore | None = None
) -> None:
    settings = settings or get_settings()
    state = state or State.from_url(settings.redis_url)
    blobs = blobs or blob_store_from_settings(settings)
    job = state.job(job_id)
    if job is None or job["status"] in TERMINAL:
        return
    if state.count_attempt(job_id) > MAX_ATTEMPTS:
        state.transition(
            job_id,
            {"queued", "running"},
            "failed",
            error={"code": "too_many_attempts", "message": f"gave up after {MAX_ATTEMPTS} attempts"},
        )
        return
    if state.cancel_requested(job_id):
        state.transition(job_id, {"queued", "running"}, "cancelled", stage="cancelled")
        return
    state.transition(job_id, {"queued"}, "running", stage="validating")
    live = Resilient(state)
    try:
        result = _build(job_id, job, state, live, blobs)
    except Cancelled:
        live.finish(job_id, {"queued", "running"}, "cancelled", stage="cancelled")
    except (PolicyError, ModelError, msgspec.ValidationError) as e:
        error = {"code": "invalid_recipe", "message": str(e)}
        live.finish(job_id, {"queued", "running"}, "failed", stage="failed", error=error)
    else:
        if result.get("error"):
            artifacts = {"artifacts": result["artifacts"]}
            live.finish(
                job_id, {"running"}, "failed", stage="failed", error=result["error"], result=artifacts
            )
        else:
            live.finish(job_id, {"running"}, "succeeded", stage="done", result=result)


def _build(
    job_id: str, job: dict[str, Any], state: State, live: Resilient, blobs: BlobStore
) -> dict[str, Any]:
    tenant = job["tenant"]
    spec = job["spec"] or {}
    recipe = msgspec.convert(spec.get("recipe") or {}, Recipe)
    batches = state.batches(spec["dataset_id"])
    total = sum(int(b["examples"]) for b in batches)
    processor = Processor(recipe)
    summary = Summary(processor)
    live.progress(job_id, "validating", 0, total)

    def dataset_lines() -> Iterator[bytes]:
        for batch in batches:  # line numbers run on across batches, in push order
            if live.cancel_requested(job_id):
                raise Cancelled
            yield from _lines(blobs.open_chunks(batch["key"]))

    with tempfile.TemporaryDirectory(prefix="tuneset-build-") as tmp:
        train = Path(tmp) / "train.jsonl"
        with train.open("wb") as out:
            dataset = state.get_dataset(tenant, spec["dataset_id"]) or {}
            # batches are stored as canonical OpenAI lines of the dataset's kind
            fmt: Format = "preference" if dataset.get("kind") == "preference" else "openai"
            summary.format = fmt
            for n, record in enumerate(read_records(dataset_lines(), fmt), 1):
                outcome = processor.process(record)
                summary.add(outcome)
                for output in outcome.outputs:
                    example = output.example if fmt == "preference" else chat_of(output.example)
                    out.write(_json.encode(example) + b"\n")
                if n % PROGRESS_EVERY == 0:
                    live.progress(job_id, "validating", n, total)
        report = summary.report()
        live.progress(job_id, "writing", summary.n, total)
        artifacts = [
            _store(
                blobs, artifact_key(tenant, job_id, "report.json"), msgspec.json.format(_json.encode(report))
            ),
        ]
        if report.ok:
            artifacts.append(_store_file(blobs, artifact_key(tenant, job_id, "train.jsonl"), train))
    result: dict[str, Any] = {
        "artifacts": artifacts,
        "examples": report.examples,
        "examples_out": report.examples_out,
        "tokens": {"billed_total": report.tokens.billed_total, "trained_total": report.tokens.trained_total},
        "estimated_cost_usd": report.estimated_cost_usd,
    }
    if not report.ok:
        failing = sorted({p.code for p in report.problems if p.action == "fail"})
        result["error"] = {
            "code": "validation_failed",
            "message": f"{report.examples_failed} example(s) failed the recipe's policies "
            f"({', '.join(failing)}); see report.json",
        }
    return result


def _store(blobs: BlobStore, key: str, data: bytes) -> dict[str, Any]:
    blobs.put(key, data)
    return {
        "name": key.rsplit("/", 1)[1],
        "key": key,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _store_file(blobs: BlobStore, key: str, path: Path) -> dict[str, Any]:
    return _store(blobs, key, path.read_bytes())
