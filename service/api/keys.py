"""API keys over the API, for admin keys only: list, create, revoke (`tuneset keys list/revoke`).

A key becomes admin when it is made so: `tuneset keys create --tenant T --admin` (on a machine that
reaches Redis: the operator's bootstrap), `POST /v1/keys {"admin": true}` by another admin, or the
key `tuneset dev` prints. An admin key manages the keys of every tenant; any other key gets 403.
The key itself is shown once, in the answer that creates it. Mounted beside the tenant routes
(not under their `tenant` dependency), so `?tenant=` here is a filter.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from litestar import Controller, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api import Services
from service.api.auth import bearer_key, require_tenant, services_of
from service.api.bodies import require_json_body
from service.api.errors import ApiProblem, not_found, problems
from service.api.schemas import TENANT_PATTERN, ApiKey, ApiKeyList, KeyCreate
from service.store import api_keys
from service.store.api_keys import KeyRecord
from service.times import rfc3339_or_none


async def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard (after the tenant guard): the bearer key must be an admin key, else 403."""
    r = services_of(connection).state.r
    if not await anyio.to_thread.run_sync(api_keys.is_admin, r, bearer_key(connection)):
        raise ApiProblem(
            403, "forbidden", "managing API keys needs an admin key (tuneset keys create --admin)"
        )


def key_out(record: KeyRecord, key: str | None = None) -> ApiKey:
    return ApiKey(
        id=record.id,
        tenant=record.tenant,
        admin=record.admin,
        hint=record.hint,
        created_at=rfc3339_or_none(record.created_at),
        key=key,
    )


class KeyController(Controller):
    path = "/keys"
    tags = ("keys",)
    guards = [require_tenant, require_json_body, require_admin]  # noqa: RUF012 -- Litestar's attribute

    @get(operation_id="listKeys", sync_to_thread=True, responses=problems(401, 403))
    def list_keys(
        self,
        services: NamedDependency[Services],
        tenant: Annotated[
            str | None, QueryParameter(pattern=TENANT_PATTERN, description="only this tenant's keys")
        ] = None,
    ) -> ApiKeyList:
        """Every API key (never the key itself: its id, tenant, last four characters), newest first."""
        return ApiKeyList(items=[key_out(k) for k in api_keys.list_keys(services.state.r, tenant)])

    @post(operation_id="createKey", status_code=201, sync_to_thread=True, responses=problems(401, 403))
    def create_key(self, data: JSONBody[KeyCreate], services: NamedDependency[Services]) -> Response[ApiKey]:
        """A new key for a tenant; the answer is the only time the key is shown."""
        key, record = api_keys.create(services.state.r, data.tenant, admin=data.admin)
        return Response(key_out(record, key), status_code=201, headers={"Cache-Control": "no-store"})

    @delete("/{key_id:str}", operation_id="revokeKey", sync_to_thread=True, responses=problems(401, 403, 404))
    def revoke_key(self, key_id: FromPath[str], services: NamedDependency[Services]) -> None:
        """Revoke a key: requests with it are refused (401) from now on."""
        if api_keys.revoke(services.state.r, key_id) is None:
            raise not_found("API key", key_id)
