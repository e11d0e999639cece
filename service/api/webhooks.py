"""Caller webhooks: subscriptions (`/v1/webhooks/subscriptions`) and the record of every delivery.

Every terminal state of every job (build, upload, fine-tune) is POSTed to the tenant's matching
subscriptions and to the job's own `callback_url`, signed per Standard Webhooks. Deliveries keep
every attempt; a failed one can be replayed, with the same `webhook-id`. Replays are rate limited
per tenant (TUNESET_RETRY_RATE_LIMIT per TUNESET_RETRY_RATE_WINDOW_S, 429 beyond): each one makes
the workers call a caller's URL.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody, QueryParameter

from service.api import Services
from service.api.auth import services_of
from service.api.datasets import Cursor, Limit
from service.api.errors import ApiProblem, not_found, problems
from service.api.providers import guarded_url, secret_box
from service.api.schemas import (
    DeliveryOut,
    DeliveryPage,
    SubscriptionCreate,
    SubscriptionList,
    SubscriptionOut,
)
from service.store.ratelimit import hit
from service.store.webhooks import Delivery, DeliveryConflict, Subscription, WebhookStore
from service.times import rfc3339, rfc3339_or_none


def webhook_store(services: Services) -> WebhookStore:
    return WebhookStore(services.state.r, secret_box(services), services.settings.webhook_disable_after)


def subscription_out(sub: Subscription, secret: str | None = None) -> SubscriptionOut:
    return SubscriptionOut(
        **{**msgspec.structs.asdict(sub), "created_at": rfc3339(sub.created_at)}, secret=secret
    )


def delivery_out(d: Delivery) -> DeliveryOut:
    out = msgspec.to_builtins(d)
    out["created_at"] = rfc3339(d.created_at)
    out["next_attempt_at"] = rfc3339_or_none(d.next_attempt_at)
    for attempt in out["attempts"]:
        attempt["at"] = rfc3339(attempt["at"])
    return msgspec.convert(out, DeliveryOut)


async def limit_retries(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: the tenant's delivery retries in this window, or a 429 problem with Retry-After."""
    tenant: str = connection.state.tenant
    await anyio.to_thread.run_sync(count_retry, services_of(connection), tenant)


def count_retry(services: Services, tenant: str) -> None:
    """Count one delivery retry of the tenant, or raise the 429 problem past the limit."""
    limit, window = services.settings.retry_rate_limit, services.settings.retry_rate_window_s
    verdict = hit(services.state.r, "retry", tenant, limit, window)
    if not verdict.allowed:
        raise ApiProblem(
            429,
            "too-many-requests",
            f"at most {limit} delivery retries per {window} s; retry in {verdict.retry_after_s} s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )


class WebhookController(Controller):
    path = "/webhooks"
    tags = ("webhooks",)

    @post(
        "/subscriptions",
        operation_id="createSubscription",
        status_code=201,
        sync_to_thread=True,
        responses=problems(401, 422, 503),
    )
    def create_subscription(
        self,
        data: JSONBody[SubscriptionCreate],
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
    ) -> Response[SubscriptionOut]:
        """Subscribe a URL to job endings; the response carries its `whsec_` signing secret, once.
        URLs resolving to loopback, private, link-local or metadata addresses are refused."""
        store = webhook_store(services)
        guarded_url(data.url, services, "url")
        events: list[str] | None = None if data.event_types is None else list(data.event_types)
        sub, secret = store.create_subscription(tenant, data.url, events)
        return Response(
            subscription_out(sub, secret),
            status_code=201,
            headers={"Location": f"/v1/webhooks/subscriptions/{sub.id}"},
        )

    @get(
        "/subscriptions", operation_id="listSubscriptions", sync_to_thread=True, responses=problems(401, 503)
    )
    def list_subscriptions(
        self, tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> SubscriptionList:
        """The tenant's subscriptions (secrets are never included)."""
        return SubscriptionList(
            items=[subscription_out(s) for s in webhook_store(services).all_subscriptions(tenant)]
        )

    @get(
        "/subscriptions/{sub_id:str}",
        operation_id="getSubscription",
        sync_to_thread=True,
        responses=problems(401, 404, 503),
    )
    def get_subscription(
        self, sub_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> SubscriptionOut:
        """One subscription: whether it is enabled and, if disabled after a run of failures, why."""
        sub = webhook_store(services).get_subscription(tenant, sub_id)
        if sub is None:
            raise not_found("subscription", sub_id)
        return subscription_out(sub)

    @post(
        "/subscriptions/{sub_id:str}/enable",
        operation_id="enableSubscription",
        status_code=200,
        sync_to_thread=True,
        responses=problems(401, 404, 503),
    )
    def enable_subscription(
        self, sub_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> SubscriptionOut:
        """Enable a subscription again after it was disabled for failing."""
        sub = webhook_store(services).enable_subscription(tenant, sub_id)
        if sub is None:
            raise not_found("subscription", sub_id)
        return subscription_out(sub)

    @delete(
        "/subscriptions/{sub_id:str}",
        operation_id="deleteSubscription",
        sync_to_thread=True,
        responses=problems(401, 404, 503),
    )
    def delete_subscription(
        self, sub_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> None:
        """Stop sending to this URL (deliveries already made keep their records)."""
        if not webhook_store(services).delete_subscription(tenant, sub_id):
            raise not_found("subscription", sub_id)

    @get("/deliveries", operation_id="listDeliveries", sync_to_thread=True, responses=problems(400, 401, 503))
    def list_deliveries(
        self,
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        cursor: Cursor = None,
        limit: Limit = 50,
        status: Annotated[
            Literal["pending", "delivered", "failed"] | None, QueryParameter(description="only this status")
        ] = None,
        subscription_id: Annotated[str | None, QueryParameter(description="only this subscription's")] = None,
    ) -> DeliveryPage:
        """Every delivery, oldest first, with each attempt's time, status code, latency and error.
        A filter looks at 5,000 deliveries per request at most: past them the page may be short
        (even empty) with a `next_cursor` to go on from; `next_cursor` is null only at the end."""
        items, next_cursor = webhook_store(services).delivery_page(
            tenant, cursor, limit, status, subscription_id
        )
        return DeliveryPage(items=[delivery_out(d) for d in items], next_cursor=next_cursor)

    @get(
        "/deliveries/{delivery_id:str}",
        operation_id="getDelivery",
        sync_to_thread=True,
        responses=problems(401, 404, 503),
    )
    def get_delivery(
        self, delivery_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> DeliveryOut:
        """One delivery and its attempts."""
        d = webhook_store(services).get_delivery(tenant, delivery_id)
        if d is None:
            raise not_found("delivery", delivery_id)
        return delivery_out(d)

    @post(
        "/deliveries/{delivery_id:str}/retry",
        operation_id="retryDelivery",
        status_code=202,
        sync_to_thread=True,
        guards=[limit_retries],
        responses=problems(401, 404, 409, 429, 503),
    )
    def retry_delivery(
        self, delivery_id: FromPath[str], tenant: NamedDependency[str], services: NamedDependency[Services]
    ) -> DeliveryOut:
        """Send a delivery again now, with the same `webhook-id` (a new timestamp and signature)."""
        return replay_delivery(services, tenant, delivery_id)


def replay_delivery(services: Services, tenant: str, delivery_id: str) -> DeliveryOut:
    """retryDelivery (and the web UI's retry button, which counts against the same rate limit)."""
    try:
        d = webhook_store(services).retry_now(tenant, delivery_id)
    except DeliveryConflict as e:
        raise ApiProblem(409, "conflict", str(e)) from None
    if d is None:
        raise not_found("delivery", delivery_id)
    return delivery_out(d)  # due now: a worker's dispatcher sends it within a second
