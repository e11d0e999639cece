"""`Idempotency-Key` on the POSTs that create something (a batch, a build): a retry takes effect once.

The first request with a key holds it (set-if-absent in Redis) while it runs; its response
(status, body, Location) is then kept for TUNESET_IDEMPOTENCY_TTL_S and replayed, with
`Idempotent-Replayed: true`, to every later request with the same key and the same request
(its fingerprint). The same key with another request is 422 `idempotency-key-reused`; while the
first is still running the others get 409 `request-in-flight` with Retry-After (the IETF draft's
answers). An error is not kept: the key is freed and the request may be retried as it is.
Keys are per tenant and shared by the endpoints, so one key names one effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import Response
from litestar.params import HeaderParameter

from service.api import Services
from service.api.errors import ApiProblem
from service.api.schemas import IDEMPOTENCY_KEY_PATTERN

IN_FLIGHT_TTL_S = 600  # a key held by a request that never finished frees itself
REPLAYED_HEADERS = ("Location",)  # the response headers a replay repeats

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="makes retries of this request safe (1-255 printable ASCII characters): the first "
        "response is replayed; the same key with another request is 422, 409 while the first runs",
    ),
]


def fingerprint(*parts: str | bytes) -> str:
    """What a key is bound to: the request's parts (route, ids, query, body), SHA-256."""
    digest = hashlib.sha256(usedforsecurity=False)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def idempotent(
    services: Services,
    tenant: str,
    key: str | None,
    request_fingerprint: str,
    run: Callable[[], Response[Any]],
    on_replay: Callable[[], None] | None = None,
) -> Response[Any]:
    """`run()`'s response, once per key: replayed for the same request, refused for another."""
    if key is None:
        return run()
    state, ttl = services.state, services.settings.idempotency_ttl_s
    record = state.idempotency_begin(tenant, key, request_fingerprint, min(ttl, IN_FLIGHT_TTL_S))
    if record is not None:
        if record.get("body") != request_fingerprint:
            raise ApiProblem(
                422,
                "idempotency-key-reused",
                "this Idempotency-Key was used with another request (body, path or query)",
            )
        if record.get("state") != "done":
            raise ApiProblem(
                409,
                "request-in-flight",
                "a request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )
        if on_replay is not None:
            on_replay()
        return Response(
            record["response"],
            status_code=int(record["status"]),
            headers={**record.get("headers", {}), "Idempotent-Replayed": "true"},
        )
    try:
        response = run()
    except BaseException:
        state.idempotency_abort(tenant, key)  # an error is not kept: retry freely
        raise
    headers = {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers}
    state.idempotency_finish(
        tenant,
        key,
        request_fingerprint,
        response.status_code or 200,
        msgspec.to_builtins(response.content),
        ttl,
        headers,
    )
    return response
