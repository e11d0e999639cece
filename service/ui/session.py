"""Signing in to the web UI: the login page keeps the API key in a cookie the browser sends only
to /ui.

The cookie (`tuneset_key`) is HttpOnly (page scripts cannot read it), SameSite=Strict (no other
site's page can make the browser send it, which also keeps cross-site form posts out) and
Path=/ui (the JSON API never sees it); Secure when the page was served over https. It lasts the
browser session. Every form post must also come from the UI's own origin (`same_origin`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio.to_thread
from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body
from litestar.response import Redirect

from service.api.auth import UI_COOKIE, services_of
from service.api.errors import ApiProblem
from service.ui.render import html

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
HOME = "/ui/datasets"
_UI_PATH = re.compile(r"/ui/[!#-\[\]-~]*")  # printable ASCII but space, quote and backslash


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of the UI only (never another site)."""
    if target and _UI_PATH.fullmatch(target):
        return target
    return HOME


async def same_origin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of form posts: the browser says where the form was (Origin, Sec-Fetch-Site); refuse
    another origin's, so a post never acts on a signed-in user's behalf from elsewhere."""
    site = connection.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiProblem(403, "forbidden", "this form was posted from another site")
    origin = connection.headers.get("origin")
    if origin is not None and origin != "null":
        host = connection.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise ApiProblem(403, "forbidden", "this form was posted from another origin")


def session_cookie(request: Request[Any, Any, Any], key: str, *, clear: bool = False) -> Cookie:
    return Cookie(
        key=UI_COOKIE,
        value="" if clear else key,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=0 if clear else None,
    )


@get("/login", include_in_schema=False, sync_to_thread=False)
def login_page(next: str | None = None) -> Response[str]:
    """The sign-in form: one field, the API key."""
    return html("login.html", next=safe_next(next), error=None)


@post("/login", include_in_schema=False, guards=[same_origin], status_code=303)
async def login(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
    """Check the key (as the API would) and keep it in the session cookie."""
    key = (data.get("api_key") or "").strip()
    target = safe_next(data.get("next"))
    state = services_of(request).state
    tenant = await anyio.to_thread.run_sync(state.tenant_for, key) if key else None
    if tenant is None:
        return html("login.html", status_code=401, next=target, error="That API key is not valid.")
    return Redirect(target, status_code=303, cookies=[session_cookie(request, key)])


@post("/logout", include_in_schema=False, guards=[same_origin], status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """Forget the key: the cookie is cleared."""
    return Redirect("/ui/login", status_code=303, cookies=[session_cookie(request, "", clear=True)])
