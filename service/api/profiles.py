"""Model profiles (`/v1/model-profiles`) and the list of chat templates (`/v1/templates`).

A profile is a tokenizer file, the model's chat template and training rules, uploaded per tenant
as multipart (files `tokenizer`, `chat_template`, `tokenizer_config`; fields `name`,
`tiktoken_preset`, `train_eot`, `train_on`, `mask_source`) or as JSON (`ProfileCreate`: the
tokenizer base64, the template and config as text). It is checked whole before anything is
stored: a template that does not parse, a tokenizer that does not load, special tokens missing
from the vocabulary or no chat template at all are 422 `invalid-profile` (the core's code in
`errors`); a file over its limit is 413 `profile-too-large` (in JSON the schema's bound, 400).

Names: a second profile under a taken name is 409 (delete the old one first, as for providers);
uploading the same files and rules again answers the stored profile with 200, so a retried
upload is harmless. Names of built-in templates are refused (409) so a name means one thing.

Parsing a large tokenizer.json is CPU work: it runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, get_args

import anyio.to_thread
import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath

from service.api import Services
from service.api.bodies import is_json, media_type, unsupported
from service.api.errors import ApiProblem, not_found, problems
from service.api.schemas import (
    PROFILE_BODY_MAX,
    PROFILE_CONFIG_MAX,
    PROFILE_NAME_PATTERN,
    PROFILE_TEMPLATE_MAX,
    PROFILE_TOKENIZER_MAX,
    CheckRowOut,
    FindingOut,
    ModelProfileDetail,
    ModelProfileList,
    ModelProfileOut,
    ProblemItem,
    ProfileCreate,
    ProfileFile,
    ProfileRules,
    TemplateEntry,
    TemplateList,
    TiktokenPreset,
)
from service.core.encodings import BUILTIN_ENCODINGS
from service.core.profiles import ModelProfile, ProfileError, TrainingRules, check_profile
from service.core.templates import BUILTIN_TEMPLATES, ChatTemplate
from service.settings import Settings
from service.store.profiles import (
    CONFIG_FILE,
    TEMPLATE_FILE,
    ProfileExists,
    ProfileNotFound,
    ProfileRecord,
    ProfileStore,
)
from service.times import rfc3339

MULTIPART = "multipart/form-data"
FILE_LIMITS = {  # multipart part -> its limit in bytes
    "tokenizer": PROFILE_TOKENIZER_MAX,
    "chat_template": PROFILE_TEMPLATE_MAX,
    "tokenizer_config": PROFILE_CONFIG_MAX,
}
TEXT_FIELDS = ("name", "tokenizer_filename", "tiktoken_preset", "train_eot", "train_on", "mask_source")


def profile_cap(settings: Settings) -> int:
    """The body cap of POST /v1/model-profiles (never above the app's own)."""
    return min(PROFILE_BODY_MAX, settings.max_body_bytes)


def profile_store(services: Services) -> ProfileStore:
    return ProfileStore(services.state.r, services.blobs)


def unknown_profile(name: str, slug: str = "invalid-request") -> ApiProblem:
    """422 `unknown_profile`: what inspect, validate and builds answer for a name the tenant lacks."""
    message = f"no model profile {name!r}; create it at /v1/model-profiles"
    return ApiProblem(422, slug, message, errors=[ProblemItem(None, None, "unknown_profile", message)])


def load_profile(services: Services, tenant: str, name: str) -> ModelProfile:
    """The tenant's loaded profile (blocking: call from a worker thread), or 422 `unknown_profile`."""
    try:
        return profile_store(services).load(tenant, name)
    except ProfileNotFound:
        raise unknown_profile(name) from None


def profile_problem(e: ProfileError) -> ApiProblem:
    """The core's refusal as a problem: 413 for a file over its limit, else 422 with the code."""
    item = [ProblemItem(None, None, e.code, e.message)]
    if e.code == "profile_too_large":
        return ApiProblem(413, "profile-too-large", e.message, errors=item)
    return ApiProblem(422, "invalid-profile", e.message, errors=item)


def profile_out(record: ProfileRecord) -> ModelProfileOut:
    return ModelProfileOut(**_fields(record))


def _fields(record: ProfileRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "content_hash": record.content_hash,
        "tokenizer_kind": record.tokenizer_kind,
        "tokenizer_sha256": record.tokenizer_sha256,
        "template_sha256": record.template_sha256,
        "vocab_size": record.vocab_size,
        "bos_token": record.bos_token,
        "eos_token": record.eos_token,
        "tiktoken_preset": record.tiktoken_preset,
        "rules": ProfileRules(
            train_eot=record.train_eot, train_on=record.train_on, mask_source=record.mask_source
        ),
        "files": {
            role: ProfileFile(filename=f.filename, size=f.size, sha256=f.sha256)
            for role, f in record.files.items()
        },
        "size": record.size,
        "created_at": rfc3339(record.created_at),
    }


@dataclass
class ProfileUploadBody(Operation):
    """OpenAPI: the body is multipart (files) or JSON (`ProfileCreate`)."""

    def __post_init__(self) -> None:
        def props(binary: bool) -> dict[str, Schema]:
            file = Schema(type=OpenAPIType.STRING, format="binary" if binary else None)  # type: ignore[arg-type]
            text = Schema(type=OpenAPIType.STRING)
            return {
                "name": Schema(type=OpenAPIType.STRING, pattern=PROFILE_NAME_PATTERN),
                "tokenizer": file
                if binary
                else Schema(type=OpenAPIType.STRING, content_encoding="base64", description="base64"),
                "tokenizer_filename": text,
                "chat_template": file if binary else text,
                "tokenizer_config": file if binary else text,
                "tiktoken_preset": Schema(type=OpenAPIType.STRING, enum=list(get_args(TiktokenPreset))),
                "train_eot": Schema(type=OpenAPIType.BOOLEAN),
                "train_on": Schema(type=OpenAPIType.STRING, enum=["all", "last"]),
                "mask_source": Schema(type=OpenAPIType.STRING, enum=["spans", "generation"]),
            }

        def schema(binary: bool) -> Schema:
            return Schema(type=OpenAPIType.OBJECT, properties=props(binary), required=["name", "tokenizer"])  # type: ignore[arg-type]

        self.request_body = RequestBody(
            required=True,
            description=f"multipart files or JSON; files at most {PROFILE_TOKENIZER_MAX} bytes (tokenizer), "
            f"{PROFILE_TEMPLATE_MAX} (chat template), {PROFILE_CONFIG_MAX} (tokenizer_config.json); "
            f"the body at most {PROFILE_BODY_MAX} bytes.",
            content={
                MULTIPART: OpenAPIMediaType(schema=schema(True)),
                "application/json": OpenAPIMediaType(schema=schema(False)),
            },
        )


async def _read_upload(field: str, value: Any) -> bytes:
    """A multipart part's bytes (a file or a plain field), refused (413) past its limit."""
    limit = FILE_LIMITS[field]
    if isinstance(value, UploadFile):
        data = await value.read(limit + 1)
        await value.close()
    elif isinstance(value, str):
        data = value.encode()
    else:
        raise ApiProblem(400, "invalid-request", f"send one {field!r} part")
    if len(data) > limit:
        message = f"{field} is larger than the {limit} bytes a profile file may have"
        raise ApiProblem(
            413, "profile-too-large", message, errors=[ProblemItem(None, None, "profile_too_large", message)]
        )
    return data


def _decode_text(field: str, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        message = f"{field} is not UTF-8 text (at byte {e.start})"
        code = "template_syntax" if field == "chat_template" else "tokenizer_unloadable"
        raise ApiProblem(
            422, "invalid-profile", message, errors=[ProblemItem(None, None, code, message)]
        ) from None


async def _multipart(request: Request[Any, Any, Any]) -> ProfileCreate:
    form = await request.form()
    unknown = sorted(set(form) - set(FILE_LIMITS) - set(TEXT_FIELDS))
    if unknown:
        raise ApiProblem(
            400,
            "invalid-request",
            f"unknown multipart parts {unknown}; known: {sorted({*FILE_LIMITS, *TEXT_FIELDS})}",
        )
    values: dict[str, Any] = {}
    for field in TEXT_FIELDS:
        if field in form:
            value = form[field]
            if not isinstance(value, str):
                raise ApiProblem(400, "invalid-request", f"{field} must be a plain field, not a file")
            values[field] = value
    tokenizer = form.get("tokenizer")
    if tokenizer is None:
        message = "the tokenizer file is missing: send it as the multipart part 'tokenizer'"
        raise ApiProblem(
            422,
            "invalid-profile",
            message,
            errors=[ProblemItem(None, None, "profile_files_missing", message)],
        )
    if isinstance(tokenizer, UploadFile) and "tokenizer_filename" not in values:
        values["tokenizer_filename"] = tokenizer.filename.rsplit("/", 1)[-1]
    values["tokenizer"] = await _read_upload("tokenizer", tokenizer)
    for field in ("chat_template", "tokenizer_config"):
        if field in form:
            values[field] = _decode_text(field, await _read_upload(field, form[field]))
    try:
        return msgspec.convert(values, ProfileCreate, strict=False)
    except msgspec.ValidationError as e:
        raise ApiProblem(
            400, "invalid-request", str(e), errors=[ProblemItem(None, None, "invalid_request", str(e))]
        ) from None


async def _json(request: Request[Any, Any, Any]) -> ProfileCreate:
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=ProfileCreate)
    except msgspec.ValidationError as e:
        raise ApiProblem(
            400, "invalid-request", str(e), errors=[ProblemItem(None, None, "invalid_request", str(e))]
        ) from None
    except msgspec.DecodeError as e:
        raise ApiProblem(400, "invalid-request", f"the body is not JSON: {e}") from None


def _files(data: ProfileCreate) -> dict[str, bytes]:
    files = {data.tokenizer_filename: data.tokenizer}
    if data.chat_template is not None:
        files[TEMPLATE_FILE] = data.chat_template.encode()
    if data.tokenizer_config is not None:
        files[CONFIG_FILE] = data.tokenizer_config.encode()
    return files


def _store_profile(data: ProfileCreate, tenant: str, services: Services) -> tuple[ProfileRecord, bool]:
    """Parse, check and store (in a worker thread): the CPU work of a big tokenizer happens here."""
    if data.name in BUILTIN_TEMPLATES:
        raise ApiProblem(409, "conflict", f"{data.name!r} is a built-in template; choose another name")
    rules = TrainingRules(train_eot=data.train_eot, train_on=data.train_on, mask_source=data.mask_source)
    try:
        return profile_store(services).put(
            tenant, data.name, _files(data), tiktoken_preset=data.tiktoken_preset, rules=rules
        )
    except ProfileError as e:
        raise profile_problem(e) from None
    except ProfileExists:
        raise ApiProblem(
            409, "conflict", f"a different model profile named {data.name!r} exists; delete it first"
        ) from None


@post(
    "/model-profiles",
    operation_id="createModelProfile",
    status_code=201,
    tags=["profiles"],
    operation_class=ProfileUploadBody,
    responses=problems(401, 409, 413, 415, 422),
)
async def create_profile(
    request: Request[Any, Any, Any], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Response[ModelProfileOut]:
    """Register a model profile: a tokenizer file, the model's chat template (or a tokenizer_config.json
    that carries it) and training rules. 201 when created; 200 when the same files and rules are
    already registered under the name; 409 when a different profile has it."""
    media = media_type(request)
    if media == MULTIPART:
        data = await _multipart(request)
    elif is_json(media):
        data = await _json(request)
    else:
        raise unsupported(media, f"{MULTIPART} or application/json")
    record, created = await anyio.to_thread.run_sync(_store_profile, data, tenant, services)
    return Response(
        profile_out(record),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/model-profiles/{record.name}"},
    )


@get(
    "/model-profiles",
    operation_id="listModelProfiles",
    tags=["profiles"],
    sync_to_thread=True,
    responses=problems(401),
)
def list_profiles(tenant: NamedDependency[str], services: NamedDependency[Services]) -> ModelProfileList:
    """The tenant's model profiles, by name, each with its content hash and file sizes."""
    return ModelProfileList(items=[profile_out(r) for r in profile_store(services).list(tenant)])


@get(
    "/model-profiles/{name:str}",
    operation_id="getModelProfile",
    tags=["profiles"],
    sync_to_thread=True,
    responses=problems(401, 404),
)
def get_profile(
    name: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> ModelProfileDetail:
    """One model profile and what it does with the fixed irregular conversations (consecutive
    assistant turns, assistant first, no system, trailing user, tool calls, empty content):
    rendered, rejected or rewritten, and what is trained (`tuneset templates check`)."""
    store = profile_store(services)
    record = store.get(tenant, name)
    if record is None:
        raise not_found("model profile", name)
    rows = check_profile(store.load_record(tenant, record))
    check = [
        CheckRowOut(
            case=row.case,
            outcome=row.outcome,
            trained=row.trained,
            findings=[FindingOut(f.code, f.message, f.message_index) for f in row.findings],
        )
        for row in rows
    ]
    return ModelProfileDetail(**_fields(record), check=check)


@delete(
    "/model-profiles/{name:str}",
    operation_id="deleteModelProfile",
    tags=["profiles"],
    sync_to_thread=True,
    responses=problems(401, 404),
)
def delete_profile(
    name: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> None:
    """Delete a model profile: new builds, inspections and validations refuse its name at once;
    builds already running with it finish with it (its files are kept a day for them)."""
    if not profile_store(services).delete(tenant, name):
        raise not_found("model profile", name)


def builtin_hash(template: ChatTemplate) -> str:
    """SHA-256 of a built-in template's canonical JSON (sorted keys, no spaces, UTF-8): the
    `template_sha256` the manifests of packed and tokenized outputs name."""
    canonical = json.dumps(
        msgspec.to_builtins(template), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@get(
    "/templates",
    operation_id="listTemplates",
    tags=["profiles"],
    sync_to_thread=True,
    responses=problems(401),
)
def list_templates(tenant: NamedDependency[str], services: NamedDependency[Services]) -> TemplateList:
    """Every chat template a request may name: the built-in ones (`template`) and the tenant's
    model profiles (`profile`), each with its content hash."""
    builtin = [
        TemplateEntry(
            name=name,
            kind="builtin",
            content_hash=builtin_hash(t),
            encoding=t.encoding,
            tokenizer_sha256=BUILTIN_ENCODINGS[t.encoding].ranks.sha256,
            template_sha256=builtin_hash(t),
            description=t.description,
        )
        for name, t in sorted(BUILTIN_TEMPLATES.items())
    ]
    tenant_profiles = [
        TemplateEntry(
            name=r.name,
            kind="profile",
            content_hash=r.content_hash,
            encoding=f"{r.tokenizer_kind}:{r.tokenizer_sha256[:12]}",
            tokenizer_sha256=r.tokenizer_sha256,
            template_sha256=r.template_sha256,
            description=f"model profile: {r.files['tokenizer'].filename}"
            + (f" + {r.files['chat_template'].filename}" if "chat_template" in r.files else ""),
        )
        for r in profile_store(services).list(tenant)
    ]
    return TemplateList(items=builtin + tenant_profiles)
