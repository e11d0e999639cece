"""What each kind of job carries: a tagged union, one Struct per kind, tagged by the job's `kind`.

The API builds a spec and `Jobs.create` stores it; whoever reads a job decodes its spec with
`decode_spec` (the worker that runs it, the dispatcher that follows a chain), so a field is
named in one place and a malformed spec fails loudly instead of as a KeyError mid-step.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from service.core.dedupe import DedupeSpec
from service.core.outputs import Outputs, default_outputs
from service.core.pipeline import Recipe
from service.core.split import SplitSpec

Kind = Literal["build", "upload", "fine_tune"]
DEFAULT_SHARD_SIZE = 5000


class Callback(msgspec.Struct, frozen=True):
    """A job's own webhook: where its endings go, and their signing secret (encrypted at rest)."""

    url: str
    secret: str


class BuildSpec(msgspec.Struct, kw_only=True, tag_field="kind", tag="build", omit_defaults=True):
    """A build of a dataset: the recipe and how to cut it into shards."""

    dataset_id: str
    recipe: Recipe = msgspec.field(default_factory=Recipe)
    shard_size: int = DEFAULT_SHARD_SIZE
    dedupe: DedupeSpec | None = None  # given: duplicates are dropped (exact, and near when asked)
    split: SplitSpec | None = None
    outputs: Outputs = msgspec.field(default_factory=default_outputs)
    models: dict[str, Any] | None = None  # the upload provider's own models-table entries
    profiles: dict[str, str] | None = None  # model profile name -> content hash when submitted
    callback: Callback | None = None
    upload_job: str | None = None  # the upload that waits for this build (see `chain`)


class UploadSpec(msgspec.Struct, kw_only=True, tag_field="kind", tag="upload", omit_defaults=True):
    """Send a succeeded build's train/validation files to a provider, once."""

    build_job: str
    provider_id: str
    provider: str  # the profile's name, for messages and results
    callback: Callback | None = None
    fine_tune_job: str | None = None  # the fine-tune that waits for this upload


class FineTuneSpec(msgspec.Struct, kw_only=True, tag_field="kind", tag="fine_tune", omit_defaults=True):
    """Start a provider fine-tuning job on an upload's files and follow it to its end."""

    build_job: str
    upload_job: str
    provider_id: str
    provider: str
    options: dict[str, Any] = {}  # the provider's fine-tuning request fields (model, method, ...)
    callback: Callback | None = None


JobSpec = BuildSpec | UploadSpec | FineTuneSpec


def kind_of(spec: JobSpec) -> Kind:
    kind: Kind = spec.__struct_config__.tag  # type: ignore[assignment]
    return kind


def encode_spec(spec: JobSpec) -> str:
    return msgspec.json.encode(spec).decode()


def decode_spec(kind: str, raw: dict[str, Any] | None) -> JobSpec:
    """A stored spec as its kind's Struct (the stored JSON may lack the tag: `kind` names it)."""
    spec: JobSpec = msgspec.convert({**(raw or {}), "kind": kind}, JobSpec)
    return spec
