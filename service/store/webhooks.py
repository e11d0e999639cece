"""Redis storage for webhook subscriptions, deliveries and the due-queue the senders poll.

Every delivery carries its own encrypted signing secret: a subscription's is copied at creation,
a build recipe's per-job callback brings one. Retries then sign the same way even if the
subscription is deleted meanwhile, and one code path sends both kinds. Secrets leave this module
only through `subscription_secret` / `delivery_secret`; records never hold them.

The due-queue is one sorted set scored by due time. `claim_due` hands each due id to one claimer
and leases it (re-scores it `lease_s` ahead) instead of dropping it, so a worker that dies
mid-attempt delays that delivery instead of losing it; `record_attempt` then re-scores or removes it.
"""

from __future__ import annotations

import json
from typing import Any, Literal, cast

import msgspec
import redis

from service.store.secrets import SecretBox
from service.store.state import P, new_id
from service.store.state import now as _now
from service.webhooks.attempt import Attempt
from service.webhooks.signing import new_secret

DeliveryStatus = Literal["pending", "delivered", "failed"]
DUE = P + "webhooks:due"
SCAN_LIMIT = 5_000  # delivery ids a filtered listing looks at per request (delivery_page)
_CHUNK = 200  # ids read, filtered and loaded per round trip
_FIELDS = ["tenant", "subscription_id", "url", "event_type", "status", "next_attempt_at", "created_at"]


class Subscription(msgspec.Struct, kw_only=True):
    id: str
    url: str
    event_types: list[str] | None  # None: every event type
    enabled: bool
    failure_streak: int  # consecutive failed attempts
    disabled_reason: str | None
    created_at: float

    def wants(self, event_type: str) -> bool:
        return self.enabled and (self.event_types is None or event_type in self.event_types)


class Delivery(msgspec.Struct, kw_only=True):
    id: str  # "msg_...": the webhook-id header, the same on every attempt so receivers can dedupe
    subscription_id: str | None  # None: a per-job callback URL from a build recipe
    url: str
    event_type: str
    status: DeliveryStatus
    attempts: list[Attempt]
    next_attempt_at: float | None
    created_at: float


class DeliveryConflict(Exception):
    """The delivery is not in a state that allows the operation (e.g. replaying a delivered one)."""


# KEYS[1] due zset; ARGV: now, limit, lease-until. Due ids, re-scored so no other claimer sees them.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""

# KEYS[1] subscription hash; ARGV: ok (1/0), disable_after, reason. Returns the streak, -1 if gone.
_STREAK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'failure_streak', 0)
  return 0
end
local n = redis.call('HINCRBY', KEYS[1], 'failure_streak', 1)
if n >= tonumber(ARGV[2]) and redis.call('HGET', KEYS[1], 'enabled') == '1' then
  redis.call('HSET', KEYS[1], 'enabled', '0', 'disabled_reason', ARGV[3])
end
return n
"""


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _sub_key(sub_id: str) -> str:
    return P + f"whsub:{sub_id}"


def _msg_key(delivery_id: str) -> str:
    return P + f"whmsg:{delivery_id}"


class WebhookStore:
    """Works with clients made with or without `decode_responses`."""

    def __init__(self, r: redis.Redis, box: SecretBox, disable_after: int = 100) -> None:
        self.r, self.box, self.disable_after = r, box, disable_after

    def _hash(self, key: str) -> dict[str, str]:
        raw: dict[Any, Any] = self.r.hgetall(key)  # type: ignore[assignment]
        return {_text(k): _text(v) for k, v in raw.items()}

    def _ids(self, index: str, after: str | None, limit: int) -> list[str]:
        low = f"({after}" if after else "-"
        raw: list[Any] = self.r.zrangebylex(index, low, "+", start=0, num=limit)  # type: ignore[assignment]
        return [_text(i) for i in raw]

    # -- subscriptions ----------------------------------------------------------------------

    def create_subscription(
        self, tenant: str, url: str, event_types: list[str] | None
    ) -> tuple[Subscription, str]:
        """The new subscription and its signing secret: the only time the secret is returned."""
        secret = new_secret()
        sub = Subscription(
            id=new_id("whsub"),
            url=url,
            event_types=event_types,
            enabled=True,
            failure_streak=0,
            disabled_reason=None,
            created_at=_now(),
        )
        fields = {
            "id": sub.id,
            "tenant": tenant,
            "url": url,
            "event_types": json.dumps(event_types),
            "enabled": "1",
            "failure_streak": 0,
            "disabled_reason": "",
            "created_at": sub.created_at,
            "secret": self.box.encrypt(secret),
        }
        pipe = self.r.pipeline()
        pipe.hset(_sub_key(sub.id), mapping=fields)
        pipe.zadd(P + f"t:{tenant}:whsubs", {sub.id: 0})
        pipe.execute()
        return sub, secret

    def _sub_fields(self, tenant: str, sub_id: str) -> dict[str, str] | None:
        raw = self._hash(_sub_key(sub_id))
        return raw if raw and raw.get("tenant") == tenant else None  # others' do not exist

    def get_subscription(self, tenant: str, sub_id: str) -> Subscription | None:
        raw = self._sub_fields(tenant, sub_id)
        if raw is None:
            return None
        return Subscription(
            id=raw["id"],
            url=raw["url"],
            event_types=json.loads(raw["event_types"]),
            enabled=raw["enabled"] == "1",
            failure_streak=int(raw["failure_streak"]),
            disabled_reason=raw["disabled_reason"] or None,
            created_at=float(raw["created_at"]),
        )

    def list_subscriptions(
        self, tenant: str, after: str | None = None, limit: int = 100
    ) -> list[Subscription]:
        subs = (self.get_subscription(tenant, i) for i in self._ids(P + f"t:{tenant}:whsubs", after, limit))
        return [s for s in subs if s is not None]

    def all_subscriptions(self, tenant: str) -> list[Subscription]:
        """Every subscription of the tenant, in creation order (page by page underneath)."""
        out: list[Subscription] = []
        after: str | None = None
        while page := self.list_subscriptions(tenant, after, 100):
            out += page
            after = page[-1].id
        return out

    def subscriptions_for(self, tenant: str, event_type: str) -> list[Subscription]:
        """The enabled subscriptions that want `event_type`: whom to fan an event out to."""
        return [s for s in self.all_subscriptions(tenant) if s.wants(event_type)]

    def delete_subscription(self, tenant: str, sub_id: str) -> bool:
        if self._sub_fields(tenant, sub_id) is None:
            return False
        pipe = self.r.pipeline()
        pipe.delete(_sub_key(sub_id))
        pipe.zrem(P + f"t:{tenant}:whsubs", sub_id)
        pipe.execute()
        return True

    def enable_subscription(self, tenant: str, sub_id: str) -> Subscription | None:
        """Re-enable a subscription (after the caller fixed their receiver), with a fresh streak."""
        if self._sub_fields(tenant, sub_id) is None:
            return None
        self.r.hset(_sub_key(sub_id), mapping={"enabled": "1", "failure_streak": 0, "disabled_reason": ""})
        return self.get_subscription(tenant, sub_id)

    def subscription_secret(self, tenant: str, sub_id: str) -> str:
        raw = self._sub_fields(tenant, sub_id)
        if raw is None:
            raise KeyError(sub_id)
        return self.box.decrypt(raw["secret"])

    # -- deliveries -------------------------------------------------------------------------

    def create_delivery(
        self,
        tenant: str,
        subscription_id: str | None,
        url: str,
        secret: str | None,
        event_type: str,
        payload: bytes,
        delivery_id: str | None = None,
    ) -> Delivery:
        """A pending delivery, due now. Give `subscription_id` (its secret is copied) or `secret`.

        `secret` is the plaintext signing secret of a per-job callback; it is stored encrypted.
        With `delivery_id` (derived from what is announced), creating it again returns the first
        one untouched: whoever announces an event twice after a crash sends it once.
        """
        if delivery_id is not None and (known := self.delivery(delivery_id)) is not None:
            return known
        if (subscription_id is None) == (secret is None):
            raise ValueError("give exactly one of subscription_id and secret")
        if subscription_id is not None:
            sub = self._sub_fields(tenant, subscription_id)
            if sub is None:
                raise KeyError(subscription_id)
            sealed = sub["secret"]
        else:
            assert secret is not None
            sealed = self.box.encrypt(secret)
        payload.decode("utf-8")  # signatures cover text: refuse what could not be signed later
        at = _now()
        delivery = Delivery(
            id=delivery_id or new_id("msg"),
            subscription_id=subscription_id,
            url=url,
            event_type=event_type,
            status="pending",
            attempts=[],
            next_attempt_at=at,
            created_at=at,
        )
        fields = {
            "id": delivery.id,
            "tenant": tenant,
            "subscription_id": subscription_id or "",
            "url": url,
            "event_type": event_type,
            "status": "pending",
            "next_attempt_at": delivery.next_attempt_at,
            "created_at": delivery.created_at,
            "secret": sealed,
            "payload": payload,
        }
        if not self.r.hsetnx(_msg_key(delivery.id), "id", delivery.id):  # a concurrent announcer won
            return self.delivery(delivery.id) or delivery
        pipe = self.r.pipeline()
        pipe.hset(_msg_key(delivery.id), mapping=fields)
        pipe.zadd(P + f"t:{tenant}:whmsgs", {delivery.id: 0})
        pipe.zadd(DUE, {delivery.id: at})
        pipe.execute()
        return delivery

    def _load(self, delivery_id: str) -> tuple[str, Delivery] | None:
        return self._load_many([delivery_id])[0]

    def _load_many(self, delivery_ids: list[str]) -> list[tuple[str, Delivery] | None]:
        """(tenant, delivery) of each id, None where it is gone: one round trip for them all."""
        pipe = self.r.pipeline()
        for delivery_id in delivery_ids:
            pipe.hmget(_msg_key(delivery_id), _FIELDS)
            pipe.lrange(_msg_key(delivery_id) + ":attempts", 0, -1)
        replies = pipe.execute()
        out: list[tuple[str, Delivery] | None] = []
        for delivery_id, values, attempts in zip(delivery_ids, replies[::2], replies[1::2], strict=True):
            if values[0] is None:
                out.append(None)
                continue
            tenant, sub_id, url, event_type, status, next_at, created_at = (_text(v) for v in values)
            delivery = Delivery(
                id=delivery_id,
                subscription_id=sub_id or None,
                url=url,
                event_type=event_type,
                status=cast(DeliveryStatus, status),
                attempts=[msgspec.json.decode(a, type=Attempt) for a in attempts],
                next_attempt_at=float(next_at) if next_at else None,
                created_at=float(created_at),
            )
            out.append((tenant, delivery))
        return out

    def delivery(self, delivery_id: str) -> Delivery | None:
        """Any tenant's delivery, for the sender that claimed its id."""
        loaded = self._load(delivery_id)
        return loaded[1] if loaded else None

    def get_delivery(self, tenant: str, delivery_id: str) -> Delivery | None:
        loaded = self._load(delivery_id)
        return loaded[1] if loaded and loaded[0] == tenant else None

    def delivery_payload(self, delivery_id: str) -> bytes:
        raw: str | bytes | None = self.r.hget(_msg_key(delivery_id), "payload")  # type: ignore[assignment]
        if raw is None:
            raise KeyError(delivery_id)
        return raw.encode("utf-8") if isinstance(raw, str) else raw

    def delivery_secret(self, delivery_id: str) -> str:
        raw: str | bytes | None = self.r.hget(_msg_key(delivery_id), "secret")  # type: ignore[assignment]
        if raw is None:
            raise KeyError(delivery_id)
        return self.box.decrypt(_text(raw))

    def delivery_page(
        self,
        tenant: str,
        after: str | None = None,
        limit: int = 50,
        status: DeliveryStatus | None = None,
        subscription_id: str | None = None,
        scan: int = SCAN_LIMIT,
    ) -> tuple[list[Delivery], str | None]:
        """Up to `limit` deliveries oldest first after the cursor, filtered by status and
        subscription, and the cursor to go on from (None at the end). A filter that matches
        little would otherwise read the whole log in one request: past `scan` ids looked at, the
        page ends short, with the last id looked at as its cursor. The filter is decided on two
        fields of each id (one round trip a chunk); only the matches are loaded whole."""
        out: list[Delivery] = []
        index = P + f"t:{tenant}:whmsgs"
        looked = 0
        while looked < scan:
            ids = self._ids(index, after, min(_CHUNK, scan - looked))
            if not ids:
                return out, None
            looked += len(ids)
            after = ids[-1]
            if status or subscription_id:
                pipe = self.r.pipeline()
                for delivery_id in ids:
                    pipe.hmget(_msg_key(delivery_id), ["status", "subscription_id"])
                fields = pipe.execute()
                ids = [
                    i
                    for i, (st, sub) in zip(ids, fields, strict=True)
                    if (not status or _text(st) == status)
                    and (not subscription_id or _text(sub) == subscription_id)
                ]
            for loaded in self._load_many(ids) if ids else []:
                if loaded is None or loaded[0] != tenant:
                    continue
                out.append(loaded[1])
                if len(out) > limit:
                    return out[:limit], out[limit - 1].id
        return out, after

    def record_attempt(self, delivery_id: str, attempt: Attempt, next_at: float | None) -> Delivery:
        """Append an attempt. A success delivers; a failure waits for `next_at`, or fails for good
        without one. The subscription's failure streak follows; at `disable_after` it is disabled.
        """
        loaded = self._load(delivery_id)
        if loaded is None:
            raise KeyError(delivery_id)
        _tenant, delivery = loaded
        status: DeliveryStatus = (
            "delivered" if attempt.ok else ("pending" if next_at is not None else "failed")
        )
        due = next_at if status == "pending" else None
        pipe = self.r.pipeline()
        pipe.rpush(_msg_key(delivery_id) + ":attempts", msgspec.json.encode(attempt))
        pipe.hset(
            _msg_key(delivery_id), mapping={"status": status, "next_attempt_at": "" if due is None else due}
        )
        if due is None:
            pipe.zrem(DUE, delivery_id)
        else:
            pipe.zadd(DUE, {delivery_id: due})
        pipe.execute()
        if delivery.subscription_id:
            reason = f"{self.disable_after} consecutive failed delivery attempts; last: {attempt.error}"
            self.r.eval(
                _STREAK,
                1,
                _sub_key(delivery.subscription_id),
                "1" if attempt.ok else "0",
                str(self.disable_after),
                reason,
            )
        delivery.attempts.append(attempt)
        delivery.status, delivery.next_attempt_at = status, due
        return delivery

    # -- the due-queue ----------------------------------------------------------------------

    def schedule(self, delivery_id: str, at: float) -> None:
        pipe = self.r.pipeline()
        pipe.hset(_msg_key(delivery_id), "next_attempt_at", str(at))
        pipe.zadd(DUE, {delivery_id: at})
        pipe.execute()

    def claim_due(self, now: float, limit: int, lease_s: float = 300.0) -> list[str]:
        """Up to `limit` ids due by `now`, each to exactly one claimer.

        A claimed id not recorded within `lease_s` becomes due again; the lease must outlast an
        attempt (the webhook timeout) or a slow attempt is claimed twice.
        """
        ids: list[Any] = self.r.eval(_CLAIM, 1, DUE, str(now), str(limit), str(now + lease_s))  # type: ignore[assignment]
        return [_text(i) for i in ids]

    def retry_now(self, tenant: str, delivery_id: str) -> Delivery | None:
        """Replay: a pending or failed delivery becomes pending and due now; None if no such delivery.

        Raises DeliveryConflict for a delivered one: it already reached the caller under the same id.
        """
        delivery = self.get_delivery(tenant, delivery_id)
        if delivery is None:
            return None
        if delivery.status == "delivered":
            raise DeliveryConflict(f"{delivery_id} was already delivered")
        at = _now()
        pipe = self.r.pipeline()
        pipe.hset(_msg_key(delivery_id), mapping={"status": "pending", "next_attempt_at": at})
        pipe.zadd(DUE, {delivery_id: at})
        pipe.execute()
        delivery.status, delivery.next_attempt_at = "pending", at
        return delivery
