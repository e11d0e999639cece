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
from service.api.batches import FORMAT_DOC, JSON_TYPE, JSONL_TYPES, decode_body, format_param, media_type
from service.api.errors import ApiProblem, problems
from service.api.schemas import InspectRequest, InspectView, ProblemItem
from service.cli import view_for
from service.core import pipeline
from service.core.formats import convert_value, detect_format
from service.core.models import ModelError
from service.core.templates import TemplateError

VALIDATE_MAX_BYTES = 4 * 1024 * 1024  # synchronous: larger inputs belong in a dataset and a build


@dataclass
class JsonlOnlyBody(Operation):
    """OpenAPI: the raw body is JSONL (or a JSON array, as `tuneset validate` reads files)."""

    def __post_init__(self) -> None:
        schema = Schema(
            type=OpenAPIType.STRING, description="JSONL: one example per line, any supported format"
        )
        self.request_body = RequestBody(
            required=True,
            description=f"JSONL, at most {VALIDATE_MAX_BYTES} bytes (after gzip, if gzip-encoded).",
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
    responses=problems(401, 422),
)
def inspect_example(data: JSONBody[InspectRequest], services: NamedDependency[Services]) -> InspectView:
    """The tokens of one example for a provider model or a chat template: which are trained, and why."""
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
    model: Annotated[str, QueryParameter(description="target provider model")] = pipeline.DEFAULT_MODEL,
    fmt: Annotated[str | None, QueryParameter(name="format", description=FORMAT_DOC)] = None,
    policy: Annotated[
        list[str] | None, QueryParameter(description="CODE=ACTION (keep, fix, drop, fail); repeatable")
    ] = None,
    system_prompt: Annotated[
        str | None, QueryParameter(description="system prompt the no_system_message fix inserts")
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
    cap = min(VALIDATE_MAX_BYTES, services.settings.max_body_bytes)
    if len(body) > cap:
        raise ApiProblem(
            413, "body-too-large", f"/v1/validate takes at most {cap} bytes; push a batch instead"
        )
    if media_type(request) not in JSONL_TYPES | {JSON_TYPE}:
        raise ApiProblem(
            415, "unsupported-media-type", "send the examples as application/jsonl or application/x-ndjson"
        )
    raw = decode_body(body, request.headers.get("content-encoding"), cap)
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
