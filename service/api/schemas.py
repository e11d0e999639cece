"""Every wire type of the HTTP API, as msgspec Structs (request bodies forbid unknown fields).

Responses that carry core types (`pipeline.Report`, `view.TrainingView`) reuse them, so the API
and `tuneset ... --json` print the same JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from service.core.dedupe import DedupeSpec
from service.core.outputs import Outputs
from service.core.split import SplitSpec
from service.core.view import Segment

DatasetKind = Literal["chat", "preference"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

# -- problems (RFC 9457) ----------------------------------------------------------------------


class ProblemItem(msgspec.Struct, omit_defaults=False):
    """One finding behind a problem: the 1-based line of the example, the 0-based message index
    (both null when not about one example or message), a stable code and a message."""

    line: int | None
    message_index: int | None
    code: str
    message: str


class ProblemDetails(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem: `application/problem+json`."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemItem] | None = None


# -- datasets ---------------------------------------------------------------------------------


class DatasetCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    kind: DatasetKind
    description: Annotated[str, Meta(max_length=4000)] | None = None


class Dataset(msgspec.Struct):
    id: str
    name: str
    kind: DatasetKind
    description: str
    created_at: float
    batches: int
    examples: int
    bytes: int


class DatasetPage(msgspec.Struct):
    items: list[Dataset]
    next_cursor: str | None


# -- batches ----------------------------------------------------------------------------------


class BatchJson(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON form of a batch body (the other is JSONL, one example per line)."""

    examples: list[Any]


class Batch(msgspec.Struct):
    """A stored batch: its examples as canonical JSONL in the blob store."""

    id: str
    examples: int
    bytes: int
    format: str
    created_at: float


class BatchCreated(msgspec.Struct):
    id: str
    dataset_id: str
    examples: int  # stored
    skipped: int  # bad lines left out (only with on_invalid=skip)
    bytes: int
    format: str
    created_at: float
    problems: list[ProblemItem]  # every problem of the skipped lines


class BatchPage(msgspec.Struct):
    items: list[Batch]


# -- builds and jobs --------------------------------------------------------------------------


class BuildRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A build recipe; every field is optional (defaults change nothing the provider accepts)."""

    model: str | None = None
    policies: dict[str, str] | None = None  # code -> keep | fix | drop | fail
    system_prompt: str | None = None
    train_on: Literal["all", "last"] | None = None
    dedupe: DedupeSpec | None = None  # given: exact (and, with near, near) duplicates are dropped
    split: SplitSpec | None = None  # a deterministic validation split by a hash of (seed, content)
    shard_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None  # examples per shard task
    outputs: Outputs | None = None  # which files to write; default: openai_jsonl and report


class BuildStarted(msgspec.Struct):
    job_id: str


class Progress(msgspec.Struct):
    done: int
    total: int


class JobError(msgspec.Struct):
    code: str
    message: str


class Job(msgspec.Struct):
    id: str
    kind: str
    status: JobStatus
    stage: str
    progress: Progress
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: Any
    error: JobError | None
    cancel_requested: bool


class JobPage(msgspec.Struct):
    items: list[Job]
    next_cursor: str | None


class Artifact(msgspec.Struct):
    name: str
    size: int
    sha256: str | None = None


class ArtifactList(msgspec.Struct):
    items: list[Artifact]


# -- tools ------------------------------------------------------------------------------------


class InspectRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One example (in any supported format) and the target to view it for."""

    example: Any
    format: str | None = None
    model: str | None = None
    template: str | None = None
    line: Annotated[int, Meta(ge=1)] = 1
    train_eot: bool = True


class InspectView(msgspec.Struct):
    """`tuneset inspect --json`: the line and the training view."""

    line: int
    target: str
    encoding: str
    segments: list[Segment]
    billed_tokens: int
    trained_tokens: int
    total_tokens: int
    notes: list[str]


# -- health -----------------------------------------------------------------------------------


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str] = {}
