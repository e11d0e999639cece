"""Every wire type of the HTTP API, as msgspec Structs (request bodies forbid unknown fields).

Responses that carry core types (`pipeline.Report`, `view.TrainingView`) reuse them, so the API
and `tuneset ... --json` print the same JSON.

Every bound of a request is a `Meta` constraint here, named once in the limits block below, so
decoding enforces it, `openapi.yaml` states it and no handler checks it again by hand: what a
client may send is what the schema says (Redis runs with `noeviction`; nothing unbounded is kept).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta

from service.core.dedupe import DedupeSpec
from service.core.formats import Format
from service.core.outputs import Outputs
from service.core.problems import Change, Problem
from service.core.profiles import PROFILE_FILE_MAX, TEMPLATE_MAX
from service.core.split import SplitSpec
from service.core.view import Segment

DatasetKind = Literal["chat", "preference"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FormatName = Literal["auto"] | Format  # auto: detected from the first examples
EventType = Literal[
    "build.succeeded",
    "build.failed",
    "build.cancelled",
    "upload.succeeded",
    "upload.failed",
    "upload.cancelled",
    "fine_tune.succeeded",
    "fine_tune.failed",
    "fine_tune.cancelled",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

# -- limits (characters for strings, entries for lists and maps) -------------------------------

NAME_MAX = 200  # a dataset's name
DESCRIPTION_MAX = 4000  # a dataset's description
URL_MAX = 2048  # base_url, callback_url, a subscription's url
API_KEY_MAX = 4096  # a provider's API key
SECRET_MAX = 256  # a provider's webhook_secret (whsec_ secrets are about 50)
API_VERSION_MAX = 64  # an Azure api_version (e.g. 2025-04-01-preview)
IDENT_MAX = 200  # a model, alias, encoding or template name
MODELS_MAX = 100  # models a provider profile adds
ALIASES_MAX = 20  # aliases of one model
MAX_TOKENS_MAX = 100_000_000  # a model's per-example token limit
SYSTEM_PROMPT_MAX = 64 * 1024  # the system prompt a build inserts
POLICIES_MAX = 100  # policy entries of a recipe (there are fewer problem codes)
CODE_MAX = 64  # a problem code or action (the recipe check names an unknown one: 422)
CURSOR_PATTERN = r"^[a-z]+_[0-9a-f]{1,64}$"  # the form of every next_cursor (an id)
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # an Idempotency-Key: printable ASCII
METADATA_MAX = 14  # a fine-tuning job's metadata entries: 2 more are tuneset's (the provider takes 16)
METADATA_KEY_MAX = 64  # a metadata key (the provider's limit)
METADATA_VALUE_MAX = 512  # and value
LINE_MAX = 2**31 - 1  # the line number inspect reports
PROFILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a model profile's name (e.g. qwen2.5-7b)
PROFILE_TOKENIZER_MAX = PROFILE_FILE_MAX  # bytes of a tokenizer file (tokenizer.json, *.model, *.tiktoken)
PROFILE_TEMPLATE_MAX = TEMPLATE_MAX  # bytes of a chat template
PROFILE_CONFIG_MAX = 4 * 1024 * 1024  # bytes of a tokenizer_config.json
PROFILE_BODY_MAX = 48 * 1024 * 1024  # a whole profile upload (the tokenizer's base64 in JSON is 4/3 larger)
TOKENIZER_FILENAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(json|model|tiktoken)$"


def at_most(entries: int) -> Meta:
    """A map of at most `entries`: msgspec enforces `max_length`, and since Litestar's OpenAPI
    drops it for maps, the schema states it as `maxProperties`."""
    return Meta(max_length=entries, extra_json_schema={"extra": {"maxProperties": entries}})


Url = Annotated[str, Meta(min_length=1, max_length=URL_MAX)]
Timestamp = Annotated[  # every time the API answers (`service.times.rfc3339`)
    str,
    Meta(
        extra_json_schema={
            "description": "RFC 3339, UTC, milliseconds: 2026-12-02T07:15:04.123Z",
            "extra": {"format": "date-time"},
        }
    ),
]
Order = Literal["desc", "asc"]  # a list's order: newest first (desc, the default) or oldest first
Ident = Annotated[str, Meta(min_length=1, max_length=IDENT_MAX)]
ProfileName = Annotated[str, Meta(pattern=PROFILE_NAME_PATTERN)]  # a model profile's name

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
    name: Annotated[str, Meta(min_length=1, max_length=NAME_MAX)]
    kind: DatasetKind
    description: Annotated[str, Meta(max_length=DESCRIPTION_MAX)] | None = None


class Dataset(msgspec.Struct):
    id: str
    name: str
    kind: DatasetKind
    description: str
    created_at: Timestamp
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
    created_at: Timestamp


class BatchCreated(msgspec.Struct):
    id: str
    dataset_id: str
    examples: int  # stored
    skipped: int  # bad lines left out (only with on_invalid=skip)
    bytes: int
    format: str
    created_at: Timestamp
    problems: list[ProblemItem]  # every problem of the skipped lines


class BatchPage(msgspec.Struct):
    items: list[Batch]


# -- builds and jobs --------------------------------------------------------------------------


class BuildRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A build recipe; every field is optional (defaults change nothing the provider accepts)."""

    model: Ident | None = None
    policies: (  # code -> keep | fix | drop | fail
        Annotated[
            dict[Annotated[str, Meta(max_length=CODE_MAX)], Annotated[str, Meta(max_length=CODE_MAX)]],
            at_most(POLICIES_MAX),
        ]
        | None
    ) = None
    system_prompt: Annotated[str, Meta(max_length=SYSTEM_PROMPT_MAX)] | None = None
    train_on: Literal["all", "last"] | None = None
    dedupe: DedupeSpec | None = None  # given: exact (and, with near, near) duplicates are dropped
    split: SplitSpec | None = None  # a deterministic validation split by a hash of (seed, content)
    shard_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None  # examples per shard task
    outputs: Outputs | None = None  # which files to write; default: openai_jsonl and report
    upload: UploadOptions | None = None  # send train/validation to this provider profile when built
    fine_tune: FineTuneOptions | None = None  # then start a fine-tuning job (needs `upload`)
    callback_url: Url | None = None  # every ending of this job (and of its upload / fine-tune) is POSTed here


class BuildStarted(msgspec.Struct, omit_defaults=True):
    job_id: str
    upload_job_id: str | None = None  # with `upload`: the job that sends the files, once the build succeeds
    fine_tune_job_id: str | None = None  # with `fine_tune`: the job that trains, once the upload succeeds
    callback_secret: str | None = None  # the whsec_ secret of `callback_url`, shown only here


# -- providers, uploads and fine-tuning ---------------------------------------------------------

ProviderName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Hyper = Literal["auto"] | float


class ModelEntry(msgspec.Struct, forbid_unknown_fields=True):
    """A model the profile adds to the models table (the shape of models.toml entries)."""

    encoding: Ident
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_MAX)]
    price_per_1m: Annotated[float, Meta(ge=0)] | None = None
    aliases: Annotated[list[Ident], Meta(max_length=ALIASES_MAX)] = []


class ProviderCreate(msgspec.Struct, forbid_unknown_fields=True):
    """An OpenAI-compatible provider; `api_key` and `webhook_secret` are kept encrypted, never returned."""

    name: ProviderName
    base_url: Url
    api_key: Annotated[str, Meta(min_length=1, max_length=API_KEY_MAX)]
    kind: Literal["openai", "azure"] = "openai"
    api_version: Annotated[str, Meta(min_length=1, max_length=API_VERSION_MAX)] | None = None  # for azure
    models: Annotated[dict[Ident, ModelEntry], at_most(MODELS_MAX)] | None = None
    webhook_secret: (  # the whsec_ secret the provider signs its webhooks with
        Annotated[str, Meta(min_length=1, max_length=SECRET_MAX)] | None
    ) = None


class Provider(msgspec.Struct):
    id: str
    name: str
    base_url: str
    kind: str
    api_version: str | None
    models: dict[str, Any] | None
    created_at: Timestamp
    api_key_hint: str | None  # the key's last four characters
    webhook_secret_set: bool
    webhook_url: str  # where the provider should send its fine-tuning webhooks


class ProviderList(msgspec.Struct):
    items: list[Provider]


class Hyperparameters(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    n_epochs: Literal["auto"] | Annotated[int, Meta(ge=1, le=50)] | None = None
    batch_size: Literal["auto"] | Annotated[int, Meta(ge=1, le=256)] | None = None
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Meta(gt=0)] | None = None
    beta: Literal["auto"] | Annotated[float, Meta(gt=0, le=2)] | None = None  # dpo only


class FineTuneOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A provider fine-tuning job; the model defaults to the build's, the method to the dataset's kind."""

    model: Ident | None = None
    method: Literal["supervised", "dpo"] | None = None
    suffix: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, Meta(ge=0, le=2147483647)] | None = None
    hyperparameters: Hyperparameters | None = None
    metadata: (
        Annotated[
            dict[
                Annotated[str, Meta(max_length=METADATA_KEY_MAX)],
                Annotated[str, Meta(max_length=METADATA_VALUE_MAX)],
            ],
            at_most(METADATA_MAX),
        ]
        | None
    ) = None


class UploadOptions(msgspec.Struct, forbid_unknown_fields=True):
    provider: ProviderName


class FineTuneRequest(FineTuneOptions, forbid_unknown_fields=True, omit_defaults=True):
    """`POST /v1/jobs/{id}/fine-tune` on a succeeded build (or its upload job)."""

    provider: ProviderName | None = None  # needed unless the build was uploaded already
    callback_url: Url | None = None


class JobStarted(msgspec.Struct, omit_defaults=True):
    job_id: str
    upload_job_id: str | None = None  # when the build's files had to be uploaded first
    callback_secret: str | None = None


# -- caller webhooks ----------------------------------------------------------------------------


class SubscriptionCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    event_types: (  # e.g. ["build.succeeded"]; null: every event
        Annotated[list[EventType], Meta(max_length=len(EVENT_TYPES))] | None
    ) = None


class SubscriptionOut(msgspec.Struct, omit_defaults=True):
    id: str
    url: str
    event_types: list[str] | None
    enabled: bool
    failure_streak: int
    disabled_reason: str | None
    created_at: Timestamp
    secret: str | None = None  # the whsec_ signing secret, returned only when created


class SubscriptionList(msgspec.Struct):
    items: list[SubscriptionOut]


class AttemptOut(msgspec.Struct):
    at: Timestamp
    status_code: int | None
    latency_ms: float
    error: str | None
    ok: bool


class DeliveryOut(msgspec.Struct):
    id: str  # the webhook-id header, the same on every attempt
    event_type: str
    url: str
    subscription_id: str | None  # null: the callback_url of a build recipe
    status: Literal["pending", "delivered", "failed"]
    attempts: list[AttemptOut]
    next_attempt_at: Timestamp | None
    created_at: Timestamp


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None


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
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
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


class TargetRule(msgspec.Struct):
    code: str  # the problem code the rule raises (`tuneset codes`)
    says: str


class TargetLimits(msgspec.Struct):
    min_examples: int
    max_examples: int | None  # null: no stated maximum
    max_tokens_per_example: int | None  # null: none stated, or the model's own (model_limit)
    max_tokens_per_model: dict[str, int]  # by base-model name prefix
    model_limit: bool  # true: the recipe model's own limit from the models table
    max_file_bytes: int | None  # a larger side is cut into parts
    encoding: str
    reserved_strings: list[str]


class TargetEntry(msgspec.Struct):
    """One training target a build may name in `outputs.targets`."""

    name: str
    platform: str
    kinds: list[str]  # dataset kinds it takes: chat, preference
    uploads: bool  # tuneset uploads its files to a provider profile (the openai SDK)
    provider_kind: str | None  # the provider profile kind its files are made for
    files: str  # the artifact name of its training file
    limits: TargetLimits
    token_counting: str
    rules: list[TargetRule]
    sources: list[str]
    notes: list[str]
    gathered: str  # when the facts were gathered
    upload_hint: str  # how to upload its files by hand


class TargetList(msgspec.Struct):
    items: list[TargetEntry]


# -- tools ------------------------------------------------------------------------------------


class InspectRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One example (in any supported format) and the target to view it for."""

    example: Any  # bounded by the body cap of /v1/inspect (TUNESET_TOOLS_MAX_BODY_BYTES)
    format: FormatName | None = None
    model: Ident | None = None
    template: Ident | None = None
    profile: ProfileName | None = None  # a model profile of the tenant (/v1/model-profiles)
    line: Annotated[int, Meta(ge=1, le=LINE_MAX)] = 1
    train_eot: bool | None = None  # false: end-of-turn tokens untrained (default: the target's rule, true)


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


# -- model profiles and templates ------------------------------------------------------------

# the pattern and special tokens of a tiktoken-format rank file (service.core.profiles.TIKTOKEN_PRESETS)
TiktokenPreset = Literal["llama3", "qwen2", "qwen3", "qwen3_5", "o200k_harmony"]
TrainOn = Literal["all", "last"]
MaskSource = Literal["spans", "generation"]


class ProfileCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A model profile as JSON: the tokenizer file base64-encoded, the template and config as text.
    (The same fields as multipart: files `tokenizer`, `chat_template`, `tokenizer_config`.)"""

    name: ProfileName
    tokenizer: Annotated[bytes, Meta(min_length=1, max_length=PROFILE_TOKENIZER_MAX)]  # base64 in JSON
    tokenizer_filename: Annotated[  # tokenizer.json (HF), or tiktoken-format ranks (*.model, *.tiktoken)
        str, Meta(pattern=TOKENIZER_FILENAME_PATTERN)
    ] = "tokenizer.json"
    chat_template: (  # chat_template.jinja; else tokenizer_config's chat_template
        Annotated[str, Meta(min_length=1, max_length=PROFILE_TEMPLATE_MAX)] | None
    ) = None
    tokenizer_config: Annotated[str, Meta(min_length=1, max_length=PROFILE_CONFIG_MAX)] | None = None
    tiktoken_preset: TiktokenPreset | None = None  # needed for a tiktoken-format rank file
    train_eot: bool = True  # the end-of-turn token after trained content carries loss
    train_on: TrainOn = "all"  # which assistant messages are trained
    mask_source: MaskSource = "spans"  # generation: the template's {% generation %} blocks


class ProfileFile(msgspec.Struct):
    filename: str
    size: int
    sha256: str


class ProfileRules(msgspec.Struct):
    train_eot: bool
    train_on: TrainOn
    mask_source: MaskSource


class ModelProfileOut(msgspec.Struct, kw_only=True):
    """A stored profile: `content_hash` identifies its files and the config that matters."""

    name: str
    content_hash: str
    tokenizer_kind: str  # hf | tiktoken
    tokenizer_sha256: str
    template_sha256: str
    vocab_size: int
    bos_token: str | None
    eos_token: str | None
    tiktoken_preset: str | None
    rules: ProfileRules
    files: dict[str, ProfileFile]  # tokenizer, chat_template, tokenizer_config (those uploaded)
    size: int  # bytes of all its files
    created_at: Timestamp


class FindingOut(msgspec.Struct):
    code: str
    message: str
    message_index: int | None


class CheckRowOut(msgspec.Struct):
    """What the profile does with one of the fixed irregular conversations."""

    case: str
    outcome: Literal["rendered", "rejected", "rewritten"]
    trained: str
    findings: list[FindingOut]


class ModelProfileDetail(ModelProfileOut, kw_only=True):
    check: list[CheckRowOut]  # `tuneset templates check`: the irregular conversations, rendered


class ModelProfileList(msgspec.Struct):
    items: list[ModelProfileOut]


class TemplateEntry(msgspec.Struct):
    name: str
    kind: Literal["builtin", "profile"]
    content_hash: str  # builtin: its template_sha256; profile: its content hash
    encoding: str  # builtin: the token encoding; profile: hf:<sha> or tiktoken:<sha> of its tokenizer
    tokenizer_sha256: str  # as the manifests of packed and tokenized outputs name them
    template_sha256: str
    description: str


class TemplateList(msgspec.Struct):
    items: list[TemplateEntry]


# -- API keys (admin) ----------------------------------------------------------------------------

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a tenant's name


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    tenant: Annotated[str, Meta(pattern=TENANT_PATTERN)]
    admin: bool = False  # an admin key may also list, create and revoke keys (of every tenant)


class ApiKey(msgspec.Struct, omit_defaults=True):
    """A key as listed: never the key itself, only its id and last four characters."""

    id: str
    tenant: str
    admin: bool
    hint: str | None  # the key's last four characters (null for keys made before hints were kept)
    created_at: Timestamp | None  # null for keys made before creation times were kept
    key: str | None = None  # the key itself, returned only when created


class ApiKeyList(msgspec.Struct):
    items: list[ApiKey]


# -- health -----------------------------------------------------------------------------------


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str] = {}


# -- browsing a dataset ---------------------------------------------------------------------------

ExampleOutcome = Literal["clean", "kept", "fixed", "dropped", "failed"]
SEARCH_MAX = 200  # characters of a text search over a dataset's examples (core.browse.SEARCH_MAX)


class ExampleItem(msgspec.Struct):
    """One line of a dataset: `line` is 1-based across its batches in push order, `codes` the
    codes of its problems (in the order found, each once), `outcome` what the recipe made of it."""

    line: int
    batch_id: str
    preview: str
    messages: int
    codes: list[str]
    outcome: ExampleOutcome


class ExamplePage(msgspec.Struct):
    """`next_cursor` is null on the last page. A page can hold fewer than `limit` items (even
    none) and still have a next cursor: a scan stops after `scan_limit` lines."""

    items: list[ExampleItem]
    next_cursor: str | None
    lines: int  # the dataset's number of lines


class StoredExample(msgspec.Struct):
    """One stored line with its problems (the objects /v1/validate lists in `problems_detail`),
    the changes fixes made, its outcome and how many examples it gives (windows, turns)."""

    line: int
    batch_id: str
    example: Any
    problems: list[Problem]
    changes: list[Change]
    outcome: ExampleOutcome
    outputs: int


class KnownModel(msgspec.Struct):
    """A provider model tuneset knows: its token encoding, per-example limit, minimum number of
    examples, training price in USD per 1M tokens (null: unknown) and the names that resolve to it."""

    name: str
    encoding: str
    max_tokens: int
    min_examples: int
    price_per_1m: float | None
    aliases: list[str]


class ModelList(msgspec.Struct):
    items: list[KnownModel]
