"""RFC 9457 problem details for every error the API answers.

Every error response is `application/problem+json` with `type`, `title`, `status` and
`detail`; problems about examples add `errors: [{line, message_index, code, message}]`.
Handlers raise `ApiProblem`; Litestar's own HTTP errors (404 route, 405, 413, validation of
parameters and bodies) and what undecodable bodies raise (invalid UTF-8, nesting deep enough
to exhaust the recursion limit) are mapped here, so none of them reaches a client as a 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from service.api.schemas import ProblemDetails, ProblemItem
from service.core.targets.registry import names as target_names

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:tuneset:problem:"

log = logging.getLogger("tuneset.api")

# The problem type of Litestar's own HTTP errors, by status.
_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "unprocessable",
    429: "too-many-requests",
    500: "internal",
    503: "unavailable",
}


# Parameters whose schema violations keep a problem type of their own (clients match on these).
_PARAMETER_SLUGS = {
    "cursor": "invalid-cursor",
    "fmt": "unknown-format",
    "idempotency_key": "invalid-idempotency-key",
}


def problem_type(slug: str) -> str:
    return TYPE_PREFIX + slug


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ApiProblem(HTTPException):
    """An error answered as a problem: `slug` names its type (`urn:tuneset:problem:<slug>`)."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[ProblemItem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=detail, status_code=status, headers=headers)
        self.slug = slug
        self.title = title or _title(status)
        self.errors = errors


def not_found(what: str, ident: str) -> ApiProblem:
    """The same answer for an unknown id and another tenant's id."""
    return ApiProblem(404, "not-found", f"no {what} {ident!r}")


def problem_response(
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    errors: list[ProblemItem] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> Response[ProblemDetails]:
    body = ProblemDetails(
        type=problem_type(slug),
        title=title or _title(status),
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _api_problem(request: Request[Any, Any, Any], exc: ApiProblem) -> Response[ProblemDetails]:
    return problem_response(
        exc.status_code,
        exc.slug,
        exc.detail,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
        instance=request.url.path,
    )


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ProblemDetails]:
    errors: list[ProblemItem] = []
    slugs: set[str] = set()
    extra: Any = exc.extra
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                where = " ".join(
                    str(getattr(item[k], "value", item[k])) for k in ("source", "key") if item.get(k)
                )
                message = str(item.get("message", ""))
                if "outputs.targets" in str(item.get("key")) and message.startswith("Invalid enum value"):
                    message += f"; known targets: {', '.join(target_names())}"
                errors.append(ProblemItem(None, None, "invalid_request", f"{where}: {message}".lstrip(": ")))
                slugs.add(_PARAMETER_SLUGS.get(str(item.get("key")), "invalid-request"))
    detail = exc.detail
    if detail.startswith("Validation failed for"):
        detail = "the request's parameters or body do not match the schema"
    slug = slugs.pop() if len(slugs) == 1 else "invalid-request"
    return problem_response(400, slug, detail, errors=errors or None, instance=request.url.path)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ProblemDetails]:
    if isinstance(exc, ApiProblem):
        return _api_problem(request, exc)
    if isinstance(exc, ValidationException):
        return _validation(request, exc)
    status = exc.status_code
    detail = exc.detail or _title(status)
    if status == 413:
        cap = request.route_handler.resolve_request_max_body_size()
        detail = f"the request body is larger than the {cap} bytes this endpoint accepts"
    return problem_response(
        status, _SLUGS.get(status, "http-error"), detail, headers=exc.headers, instance=request.url.path
    )


def _undecodable(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDetails]:
    if isinstance(exc, UnicodeDecodeError):
        detail = f"the request body is not valid UTF-8 (at byte {exc.start})"
    else:
        detail = "the request body is nested too deeply to decode"
    return problem_response(400, "undecodable-body", detail, instance=request.url.path)


def _redis(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDetails]:
    log.warning("state store error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem_response(
        503,
        "unavailable",
        "the state store is unreachable; retry later",
        headers={"Retry-After": "1"},
        instance=request.url.path,
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDetails]:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal", "an internal error occurred", instance=request.url.path)


def exception_handlers() -> ExceptionHandlersMap:
    return {
        HTTPException: _http,
        UnicodeDecodeError: _undecodable,
        RecursionError: _undecodable,
        redis.RedisError: _redis,
        Exception: _internal,
    }


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses: a problem for each status (400 is always among them)."""
    out: dict[int, ResponseSpec] = {}
    for status in sorted({400, *statuses}):
        out[status] = ResponseSpec(
            data_container=ProblemDetails,
            description=_title(status),
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
    return out
