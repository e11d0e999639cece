"""Bearer API keys → tenants. Every route under /v1 has the guard; handlers get `tenant`.

A key is looked up by its SHA-256 (`State.tenant_for`); a missing, malformed or unknown key
is a 401 problem with `WWW-Authenticate: Bearer`. The web UI (`/ui`, `service.ui`) takes the
same key from the `tuneset_key` cookie its login page sets (HttpOnly, SameSite=Strict, Path=/ui,
so the JSON API under /v1 never receives it and keeps taking the header only).
"""

from __future__ import annotations

from typing import Any, cast

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service import logs
from service.api import Services
from service.api.errors import ApiProblem


def services_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    return cast(Services, connection.app.state.services)


def provide_services(request: Request[Any, Any, Any]) -> Services:
    return services_of(request)


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="tuneset"'})


def bearer_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The request's bearer key, or a 401 problem."""
    scheme, _sep, key = connection.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized("this endpoint needs an API key: 'Authorization: Bearer <key>'")
    return key


UI_COOKIE = "tuneset_key"


async def require_tenant(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: resolve the bearer key to its tenant, or answer 401."""
    await _bind_tenant(connection, bearer_key(connection))


async def require_ui_tenant(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of /ui: the key from the login cookie (a Bearer header also works), or 401 (which the
    UI turns into a redirect to its login page)."""
    key = connection.cookies.get(UI_COOKIE, "").strip()
    await _bind_tenant(connection, key or bearer_key(connection))


async def _bind_tenant(connection: ASGIConnection[Any, Any, Any, Any], key: str) -> None:
    state = services_of(connection).state
    tenant = await anyio.to_thread.run_sync(state.tenant_for, key)
    if tenant is None:
        raise _unauthorized("the API key is not valid")
    connection.state.tenant = tenant
    logs.bind(tenant=tenant)


def provide_tenant(request: Request[Any, Any, Any]) -> str:
    tenant: str = request.state.tenant
    return tenant
