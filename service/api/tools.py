"""Synchronous tools: POST /v1/inspect (the training view of one example) and POST /v1/validate
(the report of a small JSONL body). Both answer exactly what `tuneset inspect --json` and
`tuneset validate --json` print for the same input."""

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
from service.api.schemas import (
    IDENT_MAX,
    POLICIES_MAX,
    SYSTEM_PROMPT_MAX,
    InspectRequest,
    InspectView,
    ProblemItem,
)
from service.cli import view_for
from service.core import pipeline
from service.core.formats import convert_value, detect_format
from service.core.models import ModelError
from service.core.templates import TemplateError


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
def inspect_example(data: JSONBody[InspectRequest], services: NamedDependency[Services]) -> InspectView:
    """The tokens of one example for a provider model or a chat template: which are trained, and why.
    The body takes at most TUNESET_TOOLS_MAX_BODY_BYTES (4 MiB by default)."""
    if data.model and data.template:
        raise ApiProblem(422, "invalid-request", "model and template are exclusive")
    fmt = format_param(data.format) or detect_format(data.example) or "openai"
    record = convert_value(data.example, fmt, data.line)
    if record.example is None:
        raise ApiProblem(
            422,
            "invalid-examples",
            "the example cannot be decoded",
            errors=[ProblemItem(p.line, p.message_index, p.code, p.message) for p in record.problems],
        )
    try:
        view = view_for(record.example, data.model, data.template, services.table, train_eot=data.train_eot)
    except ModelError as e:
        raise _invalid(e, "unknown_model") from None
    except TemplateError as e:
        raise _invalid(e, "unknown_template") from None
    return InspectView(line=record.line, **msgspec.structs.asdict(view))


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
    services: NamedDependency[Services],
    model: Annotated[
        str, QueryParameter(min_length=1, max_length=IDENT_MAX, description="target provider model")
    ] = pipeline.DEFAULT_MODEL,
    fmt: FormatQuery = None,
    policy: Annotated[
        list[str] | None,
        QueryParameter(max_items=POLICIES_MAX, description="CODE=ACTION (keep, fix, drop, fail); repeatable"),
    ] = None,
    system_prompt: Annotated[
        str | None,
        QueryParameter(
            max_length=SYSTEM_PROMPT_MAX, description="system prompt the no_system_message fix inserts"
        ),
    ] = None,
    train_on: Annotated[
        Literal["all", "last"], QueryParameter(description="last: train only the final turn")
    ] = "all",
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
    try:
        services.table.resolve(model)
        recipe = pipeline.Recipe(
            model=model,
            format=format_param(fmt),
            policies=pipeline.parse_policies(policy or []),
            system_prompt=system_prompt,
            train_on=train_on,
        )
        pipeline.check_recipe(recipe)
    except ModelError as e:
        raise _invalid(e, "unknown_model") from None
    except pipeline.PolicyError as e:
        raise _invalid(e, "invalid_policy") from None
    return pipeline.run(raw.split(b"\n"), recipe, per_example=per_example, table=services.table)
