"""Provider profiles (`/v1/providers`) and the receiver of providers' signed fine-tuning webhooks.

A profile's `base_url` passes the same SSRF guard as callback URLs when it is registered, and
again at every request the workers send it (a name may rebind after registration). The receiver,
`POST /v1/providers/{provider_id}/webhooks`, carries no bearer key: the provider cannot have one.
The Standard Webhooks signature, checked with the SDK's `webhooks.unwrap` against the profile's
`webhook_secret`, is its authentication, and the profile's globally unique id (not its per-tenant
name) is in the path so the tenant is known. Since anyone can post there, the profile is looked
up before the body is read, and the body is capped (TUNESET_WEBHOOK_MAX_BODY_BYTES) before
reading: an unknown id costs no memory.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.api import Services
from service.api.errors import ApiProblem, not_found, problems
from service.api.schemas import Provider, ProviderCreate, ProviderList
from service.core.models import ModelError, extend
from service.queue import FINE_TUNE_POLL_TASK, enqueue
from service.ssrf import Allowlist, UrlRefused, check_url
from service.store.providers import ProviderStore
from service.store.secrets import MissingSecretKey, SecretBox
from service.times import rfc3339

log = logging.getLogger("tuneset.api")


def provider_store(services: Services) -> ProviderStore:
    try:
        box: SecretBox | None = SecretBox.from_settings(services.settings)
    except MissingSecretKey:
        box = None
    return ProviderStore(services.state.r, box)


def secret_box(services: Services) -> SecretBox:
    """The encryption box, or a 503 problem telling the operator to set TUNESET_SECRET_KEY."""
    try:
        return SecretBox.from_settings(services.settings)
    except MissingSecretKey as e:
        raise ApiProblem(503, "not-configured", str(e)) from None


def guarded_url(url: str, services: Services, what: str) -> str:
    """The URL if the SSRF guard allows it now, else a 422 problem naming the rule."""
    try:
        check_url(url, Allowlist.from_settings(services.settings))
    except UrlRefused as e:
        raise ApiProblem(422, "url-refused", f"{what} {url!r} is refused: {e}") from None
    return url


def provider_out(record: dict[str, Any]) -> Provider:
    return Provider(
        id=record["id"],
        name=record["name"],
        base_url=record["base_url"],
        kind=record["kind"],
        api_version=record["api_version"],
        models=record["models"],
        created_at=rfc3339(record["created_at"]),
        api_key_hint=record["api_key_hint"],
        webhook_secret_set=record["webhook_secret_set"],
        webhook_url=f"/v1/providers/{record['id']}/webhooks",
    )


@post(
    "/providers",
    operation_id="createProvider",
    status_code=201,
    tags=["providers"],
    sync_to_thread=True,
    responses=problems(401, 409, 422, 503),
)
def create_provider(
    data: JSONBody[ProviderCreate], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Response[Provider]:
    """Register an OpenAI-compatible provider (OpenAI, Azure OpenAI, others) for uploads and
    fine-tuning. The API key is encrypted at rest and never returned or logged."""
    secret_box(services)
    guarded_url(data.base_url, services, "base_url")
    if data.kind == "azure" and not data.api_version:
        raise ApiProblem(422, "invalid-provider", "an azure provider needs api_version")
    models = msgspec.to_builtins(data.models) if data.models else None
    if models:
        try:
            extend(services.table, models)
        except ModelError as e:
            raise ApiProblem(422, "invalid-provider", str(e)) from None
    store = provider_store(services)
    if store.get(tenant, data.name) is not None:
        raise ApiProblem(409, "conflict", f"a provider named {data.name!r} exists; delete it first")
    record, _ = store.put(
        tenant,
        data.name,
        base_url=data.base_url,
        api_key=data.api_key,
        kind=data.kind,
        api_version=data.api_version,
        models=models,
        webhook_secret=data.webhook_secret,
    )
    return Response(provider_out(record), status_code=201, headers={"Location": f"/v1/providers/{data.name}"})


@get(
    "/providers",
    operation_id="listProviders",
    tags=["providers"],
    sync_to_thread=True,
    responses=problems(401),
)
def list_providers(tenant: NamedDependency[str], services: NamedDependency[Services]) -> ProviderList:
    """The tenant's provider profiles, by name (keys never included)."""
    return ProviderList(items=[provider_out(r) for r in provider_store(services).list(tenant)])


@get(
    "/providers/{name:str}",
    operation_id="getProvider",
    tags=["providers"],
    sync_to_thread=True,
    responses=problems(401, 404),
)
def get_provider(
    name: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> Provider:
    """One provider profile (its key is never included)."""
    record = provider_store(services).get(tenant, name)
    if record is None:
        raise not_found("provider", name)
    return provider_out(record)


@delete(
    "/providers/{name:str}",
    operation_id="deleteProvider",
    tags=["providers"],
    sync_to_thread=True,
    responses=problems(401, 404),
)
def delete_provider(
    name: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
) -> None:
    """Forget a provider profile and its encrypted key. Jobs already running with it fail."""
    if not provider_store(services).delete(tenant, name):
        raise not_found("provider", name)


class WebhookAck(msgspec.Struct):
    received: bool
    job_id: str | None  # the tuneset job following this provider job, when there is one


@post(
    "/providers/{provider_id:str}/webhooks",
    operation_id="receiveProviderWebhook",
    tags=["providers"],
    status_code=200,
    security=[],
    responses=problems(400, 404, 413),
)
async def receive_provider_webhook(
    provider_id: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> WebhookAck:
    """A provider's signed fine-tuning webhook (`fine_tuning.job.*`). The signature and a fresh
    timestamp are checked with the official SDK; the job is then polled at once for its details.
    Unknown ids are refused before the body is read; bodies over 1 MiB (by default) are refused."""
    import anyio.to_thread

    secret = await anyio.to_thread.run_sync(_webhook_secret, provider_id, services)
    body = await request.body()  # capped by the router's request_max_body_size
    headers = dict(request.headers)
    return await anyio.to_thread.run_sync(_receive, provider_id, secret, body, headers, services)


def _webhook_secret(provider_id: str, services: Services) -> str:
    """The profile's webhook signing secret, or a 404 problem when it has none (or no profile)."""
    store = provider_store(services)
    record = store.by_id(provider_id)
    creds = store.credentials(provider_id) if record is not None and store.box is not None else None
    if record is None or creds is None or not creds.webhook_secret:
        raise not_found("provider webhook endpoint", provider_id)
    return creds.webhook_secret


def _receive(
    provider_id: str, secret: str, body: bytes, headers: dict[str, str], services: Services
) -> WebhookAck:
    import openai

    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1", max_retries=0)
    try:
        event: Any = client.webhooks.unwrap(body, headers, secret=secret)
    except Exception as e:  # InvalidWebhookSignatureError, stale timestamps, malformed bodies
        raise ApiProblem(400, "invalid-signature", f"the webhook is not valid: {e}") from None
    provider_job = str(getattr(getattr(event, "data", None), "id", "") or "")
    job_id = services.state.jobs.job_of_provider_job(provider_id, provider_job) if provider_job else None
    if job_id:
        enqueue(services.settings, FINE_TUNE_POLL_TASK, [job_id])
    log.info("provider webhook %s for %s", getattr(event, "type", "?"), provider_job or "?")
    return WebhookAck(received=True, job_id=str(job_id) if job_id else None)
