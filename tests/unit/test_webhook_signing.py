"""Our signatures verify with the reference Standard Webhooks library, and only for the signed message."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.webhooks.signing import new_secret, sign

BODY = b'{"type":"job.succeeded","data":{"job_id":"job_1","note":"caf\xc3\xa9"}}'


def test_secret_format() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 32
    assert new_secret() != secret


def test_signature_verifies_with_the_reference_library() -> None:
    secret = new_secret()
    headers = sign(secret, "msg_1", int(time.time()), BODY)
    assert headers["webhook-id"] == "msg_1"
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "job.succeeded",
        "data": {"job_id": "job_1", "note": "café"},
    }


def test_datetime_timestamps_are_read_as_instants() -> None:
    secret = new_secret()
    instant = datetime.now(UTC).replace(microsecond=0)
    in_tokyo = instant.astimezone(timezone(timedelta(hours=9)))
    assert sign(secret, "msg_1", in_tokyo, BODY) == sign(secret, "msg_1", int(instant.timestamp()), BODY)
    Webhook(secret).verify(BODY, sign(secret, "msg_1", in_tokyo, BODY))
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(secret, "msg_1", datetime.now(), BODY)  # naive


@pytest.mark.parametrize(
    ("field", "value"),
    [("webhook-id", "msg_2"), ("webhook-timestamp", "shift")],
)
def test_tampered_headers_fail(field: str, value: str) -> None:
    secret = new_secret()
    headers = sign(secret, "msg_1", int(time.time()), BODY)
    headers[field] = str(int(headers[field]) - 1) if value == "shift" else value
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_tampered_body_and_wrong_secret_fail() -> None:
    secret = new_secret()
    headers = sign(secret, "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"job_1", b"job_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


@pytest.mark.parametrize("offset", [-10 * 60, 10 * 60])
def test_stale_and_future_timestamps_fail(offset: int) -> None:
    secret = new_secret()
    headers = sign(secret, "msg_1", int(time.time()) + offset, BODY)
    with pytest.raises(WebhookVerificationError, match=r"too (old|new)"):
        Webhook(secret).verify(BODY, headers)
