"""Synchronous tools: POST /v1/inspect (the training view of one example) and POST /v1/validate
(the report of a small JSONL body). Both answer exactly what `tuneset inspect --json` and
`tuneset validate --json` print for the same input.

Both take `profile`, the name of one of the tenant's model profiles (exclusive with `model` and
`template`): the example is rendered with the model's own chat template and tokenized with its
tokenizer. A name the tenant has no profile for is 422 `unknown_profile`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import JSONBody, QueryParameter, RawBody

from service.api import Services
from service.api.batches import JSONL_TYPES, FormatQuery, decode_body, format_param
from service.api.bodies import is_json, media_type, tools_cap, unsupported
from service.api.errors import ApiProblem, problems
from service.api.profiles import load_profile
from service.api.schemas import (
    IDENT_MAX,
    POLICIES_MAX,
    SYSTEM_PROMPT_MAX,
    InspectRequest,
    InspectView,
    ProblemItem,
    ProfileName,
)
from service.core import pipeline
from service.core.conversation import Example, chat_of
from service.core.example_view import view_for
from service.core.formats import Format, convert_value, detect_format
from service.core.models import ModelError
from service.core.profiles import profile_view
from service.core.templates import TemplateError
from service.core.view import TrainingView


@dataclass
class JsonlOnlyBody(Operation):
    """OpenAPI: the raw body is JSONL (or a JSON array, as `tuneset validate` reads files)."""

    def __post_init__(self) -> None:
        schema = Schema(
            type=OpenAPIType.STRING, description="JSONL: one example per line, any supported format"
        )
        self.request_body = RequestBody(
            required=True,
            description="JSONL, at most TUNESET_TOOLS_MAX_BODY_BYTES (4 MiB by default) as sent and "
            "after gzip, if gzip-encoded.",
            content={
                "application/jsonl": OpenAPIMediaType(schema=schema),
                "application/x-ndjson": OpenAPIMediaType(schema=schema),
            },
        )


# The recipe parameters of /v1/validate, which browsing a dataset takes too.
ModelQuery = Annotated[
    str | None,
    QueryParameter(
        min_length=1, max_length=IDENT_MAX, description=f"target provider model ({pipeline.DEFAULT_MODEL})"
    ),
]
ProfileQuery = Annotated[
    ProfileName | None,
    QueryParameter(description="one of the tenant's model profiles (exclusive with model)"),
]
PolicyQuery = Annotated[
    list[str] | None,
    QueryParameter(max_items=POLICIES_MAX, description="CODE=ACTION (keep, fix, drop, fail); repeatable"),
]
SystemPromptQuery = Annotated[
    str | None,
    QueryParameter(
        max_length=SYSTEM_PROMPT_MAX, description="system prompt the no_system_message fix inserts"
    ),
]
TrainOnQuery = Annotated[
    Literal["all", "last"], QueryParameter(description="last: train only the final turn")
]


def exclusive(model: str | None, template: str | None, profile: str | None) -> None:
    if sum(x is not None for x in (model, template, profile)) > 1:
        raise ApiProblem(422, "invalid-request", "model, template and profile are exclusive")


def _invalid(e: Exception, code: str) -> ApiProblem:
    return ApiProblem(422, "invalid-request", str(e), errors=[ProblemItem(None, None, code, str(e))])


@post(
    "/inspect",
    operation_id="inspectExample",
    status_code=200,
    tags=["tools"],
    sync_to_thread=True,
    responses=problems(401, 413, 415, 422),
)
def inspect_example(
    data: JSONBody[InspectRequest], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> InspectView:
    """The tokens of one example for a provider model, a chat template or a model profile: which
    are trained, and why. The body takes at most TUNESET_TOOLS_MAX_BODY_BYTES (4 MiB by default).
    With a profile, what rendering found (a template that drops or injects text, ...) is in `notes`;
    a conversation the template refuses is 422 `template_rejects_conversation`."""
    exclusive(data.model, data.template, data.profile)
    fmt = format_param(data.format) or detect_format(data.example) or "openai"
    record = convert_value(data.example, fmt, data.line)
    if record.example is None:
        raise ApiProblem(
            422,
            "invalid-examples",
            "the example cannot be decoded",
            errors=[ProblemItem(p.line, p.message_index, p.code, p.message) for p in record.problems],
        )
    return inspect_view(
        record.example, record.line, data.model, data.template, data.profile, data.train_eot, tenant, services
    )


def inspect_view(
    example: Example,
    line: int,
    model: str | None,
    template: str | None,
    profile: str | None,
    train_eot: bool | None,
    tenant: str,
    services: Services,
) -> InspectView:
    """What /v1/inspect answers for one decoded example (also the view of a stored example)."""
    exclusive(model, template, profile)
    if profile is not None:
        view = _profile_view(example, profile, tenant, services, train_eot)
        return InspectView(line=line, **msgspec.structs.asdict(view))
    try:
        view = view_for(example, model, template, services.table, train_eot=train_eot is not False)
    except ModelError as e:
        raise _invalid(e, "unknown_model") from None
    except TemplateError as e:
        raise _invalid(e, "unknown_template") from None
    return InspectView(line=line, **msgspec.structs.asdict(view))


def _profile_view(
    example: Example, name: str, tenant: str, services: Services, train_eot: bool | None
) -> TrainingView:
    """The example rendered and tokenized by the tenant's profile, its findings as notes."""
    profile = load_profile(services, tenant, name)
    if train_eot is not None and train_eot != profile.rules.train_eot:
        profile = profile.with_rules(train_eot=train_eot)
    result = profile_view(profile, chat_of(example))
    if result.view is None:
        errors = [ProblemItem(None, f.message_index, f.code, f.message) for f in result.findings]
        detail = result.findings[0].message if result.findings else "the chat template refused the example"
        raise ApiProblem(422, "template-rejects-conversation", detail, errors=errors)
    view = result.view
    view.notes.extend(f"{f.code}: {f.message}" for f in result.findings)
    return view


@post(
    "/validate",
    operation_id="validateExamples",
    status_code=200,
    tags=["tools"],
    sync_to_thread=True,
    operation_class=JsonlOnlyBody,
    responses=problems(401, 413, 415, 422),
)
def validate_examples(
    request: Request[Any, Any, Any],
    body: RawBody,
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
    model: ModelQuery = None,
    profile: ProfileQuery = None,
    fmt: FormatQuery = None,
    policy: PolicyQuery = None,
    system_prompt: SystemPromptQuery = None,
    train_on: TrainOnQuery = "all",
    per_example: Annotated[
        bool,
        QueryParameter(
            description="also list every example's token counts and every problem (problems_detail)"
        ),
    ] = False,
) -> pipeline.Report:
    """Validate a small JSONL body the way the provider would, and count its tokens.

    `problems` has one entry per code and action (count, first lines, first messages), as
    `tuneset validate --json` prints; `line` is 1-based, `message_index` 0-based."""
    media = media_type(request)
    if media not in JSONL_TYPES and not is_json(media):
        raise unsupported(media, "application/jsonl or application/x-ndjson")
    # the body itself was capped before it was read (the tools router's request_max_body_size)
    raw = decode_body(body, request.headers.get("content-encoding"), tools_cap(services.settings))
    recipe = validation_recipe(
        tenant, services, model, profile, format_param(fmt), policy, system_prompt, train_on
    )
    return pipeline.run(raw.split(b"\n"), recipe, per_example=per_example, table=services.table)


def validation_recipe(
    tenant: str,
    services: Services,
    model: str | None,
    profile: str | None,
    fmt: Format | None,
    policy: list[str] | None,
    system_prompt: str | None,
    train_on: Literal["all", "last"],
) -> pipeline.Recipe:
    """The recipe of /v1/validate's parameters (also the one a dataset is browsed under); 422
    names an unknown model or policy."""
    if model is not None and profile is not None:
        raise ApiProblem(422, "invalid-request", "model and profile are exclusive")
    model = model or pipeline.DEFAULT_MODEL
    loaded = load_profile(services, tenant, profile) if profile is not None else None
    try:
        services.table.resolve(model)
        recipe = pipeline.Recipe(
            model=model,
            profile=loaded,
            format=fmt,
            policies=pipeline.parse_policies(policy or []),
            system_prompt=system_prompt,
            train_on=train_on,
        )
        pipeline.check_recipe(recipe)
    except ModelError as e:
        raise _invalid(e, "unknown_model") from None
    except pipeline.PolicyError as e:
        raise _invalid(e, "invalid_policy") from None
    return recipe
