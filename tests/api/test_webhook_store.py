"""Webhook subscriptions, deliveries and the due-queue on a real redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
from standardwebhooks import Webhook

from service.settings import Settings
from service.store.secrets import MissingSecretKey, SecretBox, new_key
from service.store.webhooks import DUE, DeliveryConflict, Subscription, WebhookStore
from service.webhooks.send import Attempt
from service.webhooks.signing import sign

PAYLOAD = b'{"type":"job.succeeded","data":{"job_id":"job_1"}}'


@pytest.fixture(params=[True, False], ids=["str-client", "bytes-client"])
def store(settings: Settings, request: pytest.FixtureRequest) -> Iterator[WebhookStore]:
    r = redis.Redis.from_url(settings.redis_url, decode_responses=request.param)
    yield WebhookStore(r, SecretBox(new_key()), disable_after=3)
    r.close()


def failed(error: str = "HTTP 500") -> Attempt:
    return Attempt(at=time.time(), status_code=500, latency_ms=3.0, error=error, ok=False)


def succeeded() -> Attempt:
    return Attempt(at=time.time(), status_code=204, latency_ms=2.0, error=None, ok=True)


def raw_dump(settings: Settings) -> bytes:
    """Every key and value in the db as one blob: what someone with a Redis dump would read."""
    r: Any = redis.Redis.from_url(settings.redis_url)  # sync client: no awaitables in the unions
    out: list[bytes] = []
    for key in r.scan_iter("*"):
        out.append(key)
        kind = r.type(key)
        if kind == b"hash":
            out += [b for pair in r.hgetall(key).items() for b in pair]
        elif kind == b"list":
            out += r.lrange(key, 0, -1)
        elif kind == b"zset":
            out += r.zrange(key, 0, -1)
        elif kind == b"string":
            out.append(r.get(key) or b"")
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    r.close()
    assert out  # the check below would pass vacuously on an empty db
    return b"\n".join(out)


def subscription(store: WebhookStore, sub_id: str) -> Subscription:
    sub = store.get_subscription("acme", sub_id)
    assert sub is not None
    return sub


# -- secrets ----------------------------------------------------------------------------------------


def test_secret_box_round_trip_and_missing_key() -> None:
    box = SecretBox(new_key())
    token = box.encrypt("sk-provider-key")
    assert "sk-provider-key" not in token
    assert box.decrypt(token) == "sk-provider-key"
    with pytest.raises(ValueError, match="cannot decrypt"):
        SecretBox(new_key()).decrypt(token)
    with pytest.raises(MissingSecretKey, match="TUNESET_SECRET_KEY"):
        SecretBox.from_settings(Settings(secret_key=None))
    with pytest.raises(ValueError, match="not a Fernet key"):
        SecretBox("too-short")
    key = new_key()
    assert SecretBox.from_settings(Settings(secret_key=key)).decrypt(SecretBox(key).encrypt("x")) == "x"


# -- subscriptions ----------------------------------------------------------------------------------


def test_subscription_created_with_a_secret_that_is_never_in_records(
    store: WebhookStore, settings: Settings
) -> None:
    sub, secret = store.create_subscription("acme", "https://hooks.example.com/cb", ["job.succeeded"])
    assert sub.id.startswith("whsub_")
    assert secret.startswith("whsec_")
    assert (sub.enabled, sub.failure_streak, sub.disabled_reason) == (True, 0, None)
    assert store.get_subscription("acme", sub.id) == sub
    assert store.list_subscriptions("acme") == [sub]
    assert store.subscription_secret("acme", sub.id) == secret
    assert secret.encode() not in msgspec.json.encode(store.list_subscriptions("acme"))
    assert secret.encode() not in raw_dump(settings)  # encrypted at rest


def test_subscriptions_are_per_tenant(store: WebhookStore) -> None:
    sub, _ = store.create_subscription("acme", "https://a.example.com/", None)
    assert store.get_subscription("other", sub.id) is None
    assert store.list_subscriptions("other") == []
    assert not store.delete_subscription("other", sub.id)
    with pytest.raises(KeyError):
        store.subscription_secret("other", sub.id)
    with pytest.raises(KeyError):
        store.create_delivery("other", sub.id, sub.url, None, "job.succeeded", PAYLOAD)
    assert store.delete_subscription("acme", sub.id)
    assert store.get_subscription("acme", sub.id) is None
    assert store.list_subscriptions("acme") == []


def test_subscriptions_for_an_event(store: WebhookStore) -> None:
    every, _ = store.create_subscription("acme", "https://a.example.com/", None)
    failures, _ = store.create_subscription("acme", "https://b.example.com/", ["job.failed"])
    assert [s.id for s in store.subscriptions_for("acme", "job.failed")] == [every.id, failures.id]
    assert [s.id for s in store.subscriptions_for("acme", "job.succeeded")] == [every.id]


# -- deliveries -------------------------------------------------------------------------------------


def test_subscription_delivery_signs_with_the_subscription_secret(store: WebhookStore) -> None:
    sub, secret = store.create_subscription("acme", "https://hooks.example.com/cb", None)
    d = store.create_delivery("acme", sub.id, sub.url, None, "job.succeeded", PAYLOAD)
    assert d.id.startswith("msg_")
    assert (d.status, d.attempts, d.subscription_id) == ("pending", [], sub.id)
    assert d.next_attempt_at == d.created_at
    assert store.get_delivery("acme", d.id) == d
    assert store.delivery_payload(d.id) == PAYLOAD
    assert store.delivery_secret(d.id) == secret
    assert store.delete_subscription("acme", sub.id)
    assert store.delivery_secret(d.id) == secret  # retries still sign after the subscription is gone


def test_per_job_callback_delivery_keeps_its_own_encrypted_secret(
    store: WebhookStore, settings: Settings
) -> None:
    job_secret = "whsec_" + "A" * 43
    d = store.create_delivery("acme", None, "https://cb.example.com/job", job_secret, "job.failed", PAYLOAD)
    assert d.subscription_id is None
    assert store.delivery_secret(d.id) == job_secret
    assert job_secret.encode() not in raw_dump(settings)
    assert job_secret.encode() not in msgspec.json.encode(store.get_delivery("acme", d.id))
    with pytest.raises(ValueError, match="exactly one"):
        store.create_delivery("acme", None, "https://cb.example.com/", None, "job.failed", PAYLOAD)
    with pytest.raises(UnicodeDecodeError):
        store.create_delivery("acme", None, "https://cb.example.com/", job_secret, "job.failed", b"\xff")


def test_attempts_are_recorded_in_order_until_delivered(store: WebhookStore) -> None:
    d = store.create_delivery("acme", None, "https://cb.example.com/", "whsec_QUJD", "job.failed", PAYLOAD)
    first, second, third = failed("HTTP 500"), failed("timed out (ReadTimeout)"), succeeded()
    after = store.record_attempt(d.id, first, next_at=1000.0)
    assert (after.status, after.next_attempt_at) == ("pending", 1000.0)
    store.record_attempt(d.id, second, next_at=2000.0)
    final = store.record_attempt(d.id, third, next_at=None)
    assert final.status == "delivered"
    assert final.next_attempt_at is None
    loaded = store.get_delivery("acme", d.id)
    assert loaded == final
    assert loaded is not None
    assert loaded.attempts == [first, second, third]
    assert store.claim_due(now=10_000.0, limit=10) == []  # nothing left to send


def test_exhausted_schedule_fails_for_good(store: WebhookStore) -> None:
    d = store.create_delivery("acme", None, "https://cb.example.com/", "whsec_QUJD", "job.failed", PAYLOAD)
    result = store.record_attempt(d.id, failed(), next_at=None)
    assert (result.status, result.next_attempt_at) == ("failed", None)
    assert store.claim_due(now=time.time() + 10**6, limit=10) == []


def test_failure_streak_disables_the_subscription_and_success_resets_it(store: WebhookStore) -> None:
    sub, _ = store.create_subscription("acme", "https://down.example.com/", None)
    d = store.create_delivery("acme", sub.id, sub.url, None, "job.failed", PAYLOAD)
    store.record_attempt(d.id, failed(), next_at=1.0)
    store.record_attempt(d.id, failed(), next_at=2.0)
    assert subscription(store, sub.id).failure_streak == 2
    store.record_attempt(d.id, succeeded(), next_at=None)
    assert subscription(store, sub.id).failure_streak == 0

    d2 = store.create_delivery("acme", sub.id, sub.url, None, "job.failed", PAYLOAD)
    for at in (1.0, 2.0):
        store.record_attempt(d2.id, failed(), next_at=at)
    assert subscription(store, sub.id).enabled
    store.record_attempt(d2.id, failed("HTTP 503"), next_at=3.0)  # the third in a row: disable_after=3
    disabled = store.get_subscription("acme", sub.id)
    assert disabled is not None
    assert (disabled.enabled, disabled.failure_streak) == (False, 3)
    assert disabled.disabled_reason is not None
    assert "3 consecutive failed" in disabled.disabled_reason
    assert "HTTP 503" in disabled.disabled_reason
    assert store.subscriptions_for("acme", "job.failed") == []

    enabled = store.enable_subscription("acme", sub.id)
    assert enabled is not None
    assert (enabled.enabled, enabled.failure_streak, enabled.disabled_reason) == (True, 0, None)


def test_deliveries_are_per_tenant(store: WebhookStore) -> None:
    d = store.create_delivery("acme", None, "https://cb.example.com/", "whsec_QUJD", "job.failed", PAYLOAD)
    assert store.get_delivery("other", d.id) is None
    assert store.delivery_page("other")[0] == []
    assert store.retry_now("other", d.id) is None
    assert store.delivery(d.id) == d  # the sender, holding only the id, sees it


def test_list_deliveries_pages_and_filters(store: WebhookStore) -> None:
    ids = []
    for _ in range(5):
        d = store.create_delivery(
            "acme", None, "https://cb.example.com/", "whsec_QUJD", "job.failed", PAYLOAD
        )
        ids.append(d.id)
        time.sleep(0.002)  # ids sort by their millisecond prefix
    store.record_attempt(ids[1], succeeded(), next_at=None)
    store.record_attempt(ids[3], succeeded(), next_at=None)
    assert [d.id for d in store.delivery_page("acme", limit=2)[0]] == ids[:2]
    assert [d.id for d in store.delivery_page("acme", after=ids[1], limit=2)[0]] == ids[2:4]
    assert [d.id for d in store.delivery_page("acme", status="delivered")[0]] == [ids[1], ids[3]]
    assert [d.id for d in store.delivery_page("acme", status="pending", after=ids[0])[0]] == [ids[2], ids[4]]
    assert [d.id for d in store.delivery_page("acme", status="pending", limit=1, after=ids[2])[0]] == [ids[4]]


# -- the due-queue ----------------------------------------------------------------------------------


def test_claim_due_returns_only_due_ids_and_leases_them(store: WebhookStore) -> None:
    a = store.create_delivery("acme", None, "https://a.example.com/", "whsec_QUJD", "e", PAYLOAD)
    b = store.create_delivery("acme", None, "https://b.example.com/", "whsec_QUJD", "e", PAYLOAD)
    store.schedule(b.id, at=5_000_000_000.0)
    now = time.time()
    assert store.claim_due(now, limit=10, lease_s=60) == [a.id]
    assert store.claim_due(now, limit=10, lease_s=60) == []  # leased: not handed out twice
    assert store.claim_due(now + 61, limit=10) == [a.id]  # a claimer died: it comes back after the lease
    later = store.delivery(b.id)
    assert later is not None
    assert later.next_attempt_at == 5_000_000_000.0


def test_claim_due_is_exclusive_under_concurrent_claimers(store: WebhookStore) -> None:
    pipe = store.r.pipeline()
    expected = {f"msg_{i:04d}" for i in range(300)}
    for i, delivery_id in enumerate(sorted(expected)):
        pipe.zadd(DUE, {delivery_id: 1000.0 + i})
    pipe.execute()
    claimed: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claimer(out: list[str]) -> None:
        start.wait()
        out.extend(store.claim_due(now=10_000.0, limit=3))
        start.wait()  # both hold a first claim, so both really race for the rest
        while ids := store.claim_due(now=10_000.0, limit=3):
            out.extend(ids)

    threads = [threading.Thread(target=claimer, args=(claimed[i],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert set(claimed[0]).isdisjoint(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(expected)  # each exactly once, none lost


def test_retry_now_puts_a_failed_delivery_back(store: WebhookStore) -> None:
    d = store.create_delivery("acme", None, "https://cb.example.com/", "whsec_QUJD", "job.failed", PAYLOAD)
    store.claim_due(time.time(), limit=10)
    store.record_attempt(d.id, failed(), next_at=None)
    assert store.claim_due(time.time() + 10**6, limit=10) == []

    before = time.time()
    again = store.retry_now("acme", d.id)
    assert again is not None
    assert again.status == "pending"
    assert again.next_attempt_at is not None
    assert again.next_attempt_at >= before - 0.01
    assert store.get_delivery("acme", d.id) == again
    assert store.claim_due(time.time() + 0.01, limit=10) == [d.id]  # due now (times are kept to the ms)

    store.record_attempt(d.id, succeeded(), next_at=None)
    with pytest.raises(DeliveryConflict):
        store.retry_now("acme", d.id)


def test_delivery_id_is_the_webhook_id_on_every_attempt(store: WebhookStore) -> None:
    sub, secret = store.create_subscription("acme", "https://hooks.example.com/", None)
    d = store.create_delivery("acme", sub.id, sub.url, None, "job.succeeded", PAYLOAD)
    headers = sign(store.delivery_secret(d.id), d.id, int(time.time()), store.delivery_payload(d.id))
    assert headers["webhook-id"] == d.id
    Webhook(secret).verify(PAYLOAD, headers)


def test_a_filtered_listing_looks_at_a_bounded_number_of_ids_and_goes_on_by_cursor(
    store: WebhookStore,
) -> None:
    """A filter that matches little ends the page short after `scan` ids, with a cursor; walking
    the cursors returns exactly the matches, in order, and ends with None."""
    ids = [
        store.create_delivery("acme", None, "https://cb.example.com/", "whsec_QUJD", "job.failed", PAYLOAD).id
        for _ in range(45)
    ]
    ids.sort()
    for i in (3, 17, 40):
        store.record_attempt(ids[i], succeeded(), next_at=None)
    found: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.delivery_page("acme", cursor, limit=2, status="delivered", scan=10)
        pages += 1
        assert len(page) <= 2
        found += [d.id for d in page]
        if cursor is None:
            break
        assert pages < 20
    assert found == [ids[3], ids[17], ids[40]]
    assert pages >= 5  # 45 ids, at most 10 looked at per page
    full, more = store.delivery_page("acme", None, limit=2)
    assert [d.id for d in full] == ids[:2]
    assert more == ids[1]
    last, end = store.delivery_page("acme", ids[42], limit=2)
    assert ([d.id for d in last], end) == (ids[43:], None)
