"""Request bodies: the media types JSON endpoints take, checked in one guard before reading.

Every handler that decodes a JSON body (a `data` parameter) answers 415 to any media type but
`application/json` and `application/*+json` (parameters such as `charset` are allowed), so a
new JSON route cannot forget it. Raw-body routes take other types: batches and /v1/validate
check theirs with `is_json` / `media_type` from here; a provider's webhook is authenticated by
its signature over the raw bytes, whatever their declared type.

Body sizes are capped per router in `app.py` (`request_max_body_size`): Litestar refuses a
too-large Content-Length before reading anything and counts a streamed body as it arrives
(413 either way), so no handler reads more than its cap.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import BodyKwarg

from service.api.errors import ApiProblem
from service.settings import Settings

JSON_TYPE = "application/json"


def tools_cap(settings: Settings) -> int:
    """The body cap of /v1/inspect and /v1/validate (never above the app's own)."""
    return min(settings.tools_max_body_bytes, settings.max_body_bytes)


def webhook_cap(settings: Settings) -> int:
    """The body cap of a provider's webhook (never above the app's own)."""
    return min(settings.webhook_max_body_bytes, settings.max_body_bytes)


def media_type(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The Content-Type without its parameters, lower case ("" when absent)."""
    return connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    """`application/json` or a structured `+json` type (RFC 6839), e.g. application/merge-patch+json."""
    return media == JSON_TYPE or (media.startswith("application/") and media.endswith("+json"))


def takes_json(handler: BaseRouteHandler) -> bool:
    """Whether the handler decodes a JSON body (a `data` parameter, JSON unless declared otherwise)."""
    field = handler.parsed_data_field
    if field is None:
        return False
    kwarg = field.kwarg_definition
    return not isinstance(kwarg, BodyKwarg) or kwarg.media_type == RequestEncodingType.JSON


def unsupported(media: str, accepted: str) -> ApiProblem:
    return ApiProblem(415, "unsupported-media-type", f"Content-Type {media or 'missing'!r}: send {accepted}")


async def require_json_body(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: a JSON endpoint's body must be declared JSON (415), checked before it is read."""
    if takes_json(handler):
        media = media_type(connection)
        if not is_json(media):
            raise unsupported(media, "application/json")
