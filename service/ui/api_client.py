"""The UI as a client of its own API: a page that shows what an API route answers asks that
route, in process (an ASGI call, no socket), with the signed-in user's key as its Bearer token.
The answer is decoded into the route's own wire type; a problem becomes the same ApiProblem, so
the page shows the API's status and message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

import httpx
import msgspec
from litestar import Request

from service.api.auth import UI_COOKIE, bearer_key
from service.api.errors import TYPE_PREFIX, ApiProblem

T = TypeVar("T")


def ui_key(request: Request[Any, Any, Any]) -> str:
    """The key the guard accepted: the login cookie's, else the Bearer header's."""
    return request.cookies.get(UI_COOKIE, "").strip() or bearer_key(request)


async def api_get(
    request: Request[Any, Any, Any], path: str, params: Sequence[tuple[str, str]] = ()
) -> httpx.Response:
    return await _call(request, "GET", path, params=list(params))


async def api_post(request: Request[Any, Any, Any], path: str, body: Any) -> httpx.Response:
    """A JSON body, as the API's JSON routes require."""
    headers = {"Content-Type": "application/json"}
    return await _call(request, "POST", path, content=msgspec.json.encode(body), headers=headers)


async def _call(
    request: Request[Any, Any, Any], method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    transport = httpx.ASGITransport(app=cast(Any, request.app))
    auth = {"Authorization": f"Bearer {ui_key(request)}", **(headers or {})}
    async with httpx.AsyncClient(transport=transport, base_url="http://tuneset-ui.internal") as client:
        return await client.request(method, path, headers=auth, **kw)


def problem_of(response: httpx.Response) -> ApiProblem:
    try:
        body = response.json()
    except ValueError:
        body = {}
    slug = str(body.get("type", "")).removeprefix(TYPE_PREFIX) or "error"
    detail = str(body.get("detail") or response.reason_phrase)
    for item in body.get("errors") or []:  # each item names its line and rule
        where = f"line {item.get('line')}: " if item.get("line") is not None else ""
        if where or item.get("message") != detail:
            detail += f" · {where}{item.get('code')}: {item.get('message')}"
        else:
            detail += f" ({item.get('code')})"
    title = str(body.get("title") or "") or None
    return ApiProblem(response.status_code, slug, detail, title=title)


def decoded(response: httpx.Response, type_: type[T]) -> T:
    """The answer as `type_`, or the problem it is."""
    if response.status_code >= 400:
        raise problem_of(response)
    return msgspec.json.decode(response.content, type=type_)
