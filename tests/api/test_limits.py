"""What one client may make the API read or keep (issue 9, defects 6 and 7), over HTTP against a
real redis-server: every bound of a request is in the schema (oversized fields are refused, naming
the field, before anything is stored, and openapi.yaml states the bounds); JSON endpoints answer
415 to other media types; the tools and the unauthenticated provider webhook refuse a large body
before reading it (a real uvicorn server and a client that never sends the rest); finished jobs
expire; delivery retries are rate limited."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
import yaml
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient
from pydantic import SecretStr

import service.api.builds
import service.jobs.chain
from service.api import schemas
from service.api.app import create_app
from service.cli import openapi_yaml
from service.core.packing import SEQ_LEN_MAX
from service.jobs import ErrorCode
from service.run import free_port
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import State
from tests.api.test_api import assert_problem, auth

Client = TestClient[Litestar]
MiB = 1024 * 1024
SECRET = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """The production body cap (64 MiB), so the caps under test are the endpoints' own."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path,
        secret_key=SecretStr(new_key()),
        webhook_allow_hosts=["127.0.0.1"],
        job_retention_s=1234,
        retry_rate_limit=3,
        retry_rate_window_s=60,
    )


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
def client(app: Litestar) -> Iterator[Client]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def key(state: State) -> str:
    return state.create_key("acme")


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    monkeypatch.setattr(service.jobs.chain, "enqueue", lambda *args, **kwargs: calls.append(args))
    return calls


def dataset(client: Client, key: str) -> str:
    r = client.post("/v1/datasets", json={"name": "chats", "kind": "chat"}, headers=auth(key))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def provider(**over: Any) -> dict[str, Any]:
    return {"name": "fake", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test-0123", **over}


def stored(state: State) -> dict[str, str]:
    """Every key in Redis and its type: what a refused request must leave as it was."""
    return {k: str(state.r.type(k)) for k in state.r.scan_iter()}


def too_long(limit: int) -> str:
    return "x" * (limit + 1)


# -- limits in the wire types ---------------------------------------------------------------------

OVERSIZED: list[tuple[str, str, dict[str, Any], str]] = [
    ("dataset name", "/v1/datasets", {"name": too_long(schemas.NAME_MAX), "kind": "chat"}, "name"),
    (
        "dataset description",
        "/v1/datasets",
        {"name": "n", "kind": "chat", "description": too_long(schemas.DESCRIPTION_MAX)},
        "description",
    ),
    (
        "system_prompt",
        "/v1/datasets/{ds}/builds",
        {"system_prompt": too_long(schemas.SYSTEM_PROMPT_MAX)},
        "system_prompt",
    ),
    ("build model", "/v1/datasets/{ds}/builds", {"model": too_long(schemas.IDENT_MAX)}, "model"),
    (
        "callback_url",
        "/v1/datasets/{ds}/builds",
        {"callback_url": "http://127.0.0.1/" + too_long(schemas.URL_MAX)},
        "callback_url",
    ),
    (
        "policies",
        "/v1/datasets/{ds}/builds",
        {"policies": {f"code_{i}": "fix" for i in range(schemas.POLICIES_MAX + 1)}},
        "policies",
    ),
    ("api_version", "/v1/providers", provider(api_version=too_long(schemas.API_VERSION_MAX)), "api_version"),
    (
        "webhook_secret",
        "/v1/providers",
        provider(webhook_secret=too_long(schemas.SECRET_MAX)),
        "webhook_secret",
    ),
    ("api_key", "/v1/providers", provider(api_key=too_long(schemas.API_KEY_MAX)), "api_key"),
    (
        "base_url",
        "/v1/providers",
        provider(base_url="http://127.0.0.1/" + too_long(schemas.URL_MAX)),
        "base_url",
    ),
    (
        "models",
        "/v1/providers",
        provider(
            models={
                f"m{i}": {"encoding": "o200k_base", "max_tokens": 1000} for i in range(schemas.MODELS_MAX + 1)
            }
        ),
        "models",
    ),
    (
        "model aliases",
        "/v1/providers",
        provider(
            models={
                "m": {
                    "encoding": "o200k_base",
                    "max_tokens": 1000,
                    "aliases": [f"a{i}" for i in range(schemas.ALIASES_MAX + 1)],
                }
            }
        ),
        "aliases",
    ),
    (
        "subscription url",
        "/v1/webhooks/subscriptions",
        {"url": "http://127.0.0.1/" + too_long(schemas.URL_MAX)},
        "url",
    ),
    (
        "fine-tune metadata",
        "/v1/jobs/job_0/fine-tune",
        {"provider": "fake", "metadata": {"k": too_long(schemas.METADATA_VALUE_MAX)}},
        "metadata",
    ),
    ("inspect template", "/v1/inspect", {"example": {}, "template": too_long(schemas.IDENT_MAX)}, "template"),
]


@pytest.mark.parametrize(("what", "path", "body", "field"), OVERSIZED, ids=[o[0] for o in OVERSIZED])
def test_an_oversized_field_is_refused_naming_it_and_nothing_is_stored(
    client: Client,
    key: str,
    state: State,
    enqueued: list[Any],
    what: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    ds = dataset(client, key)
    before = stored(state)
    r = client.post(path.format(ds=ds), json=body, headers=auth(key))
    problem = assert_problem(r, 400, "invalid-request")
    assert any(field in e["message"] for e in problem["errors"]), (what, problem)
    assert stored(state) == before, f"{what}: something was stored"
    assert enqueued == []


def test_a_field_at_its_limit_is_accepted(client: Client, key: str, enqueued: list[Any]) -> None:
    ds = dataset(client, key)
    prompt = "x" * schemas.SYSTEM_PROMPT_MAX
    r = client.post(f"/v1/datasets/{ds}/builds", json={"system_prompt": prompt}, headers=auth(key))
    assert r.status_code == 202, r.text
    models = {f"m{i}": {"encoding": "o200k_base", "max_tokens": 1000} for i in range(schemas.MODELS_MAX)}
    body = provider(
        webhook_secret="s" * schemas.SECRET_MAX, models=models, kind="azure", api_version="v" * 64
    )
    assert client.post("/v1/providers", json=body, headers=auth(key)).status_code == 201


def test_openapi_states_the_limits_the_api_enforces() -> None:
    schema = yaml.safe_load(openapi_yaml())
    props = {name: c.get("properties", {}) for name, c in schema["components"]["schemas"].items()}
    for component, prop, bound, value in [
        ("DatasetCreate", "name", "maxLength", schemas.NAME_MAX),
        ("BuildRequest", "system_prompt", "maxLength", schemas.SYSTEM_PROMPT_MAX),
        ("BuildRequest", "callback_url", "maxLength", schemas.URL_MAX),
        ("BuildRequest", "policies", "maxProperties", schemas.POLICIES_MAX),
        ("ProviderCreate", "base_url", "maxLength", schemas.URL_MAX),
        ("ProviderCreate", "api_version", "maxLength", schemas.API_VERSION_MAX),
        ("ProviderCreate", "webhook_secret", "maxLength", schemas.SECRET_MAX),
        ("ProviderCreate", "models", "maxProperties", schemas.MODELS_MAX),
        ("ModelEntry", "aliases", "maxItems", schemas.ALIASES_MAX),
        ("FineTuneOptions", "metadata", "maxProperties", schemas.METADATA_MAX),
        ("SubscriptionCreate", "url", "maxLength", schemas.URL_MAX),
        ("InspectRequest", "model", "maxLength", schemas.IDENT_MAX),
        ("PackedSpec", "seq_len", "maximum", SEQ_LEN_MAX),
    ]:
        assert props[component][prop][bound] == value, (component, prop, bound)
    assert props["SubscriptionCreate"]["event_types"]["oneOf"][0]["items"]["enum"] == list(
        schemas.EVENT_TYPES
    )
    assert props["InspectRequest"]["format"]["enum"][:2] == ["auto", "openai"]
    ops = {
        op["operationId"]: op
        for item in schema["paths"].values()
        for op in item.values()
        if "operationId" in op
    }

    def parameter(op_id: str, name: str) -> dict[str, Any]:
        (found,) = [p["schema"] for p in ops[op_id]["parameters"] if p["name"] == name]
        return dict(found)

    for op_id in ("listDatasets", "listJobs", "listDeliveries"):
        assert parameter(op_id, "cursor")["pattern"] == schemas.CURSOR_PATTERN, op_id
    assert parameter("pushBatch", "Idempotency-Key")["pattern"] == schemas.IDEMPOTENCY_KEY_PATTERN
    assert parameter("validateExamples", "system_prompt")["maxLength"] == schemas.SYSTEM_PROMPT_MAX
    for op_id in ("pushBatch", "validateExamples"):
        assert "sharegpt" in parameter(op_id, "format")["enum"], op_id
    assert "429" in ops["retryDelivery"]["responses"]
    for op_id in ("inspectExample", "validateExamples", "receiveProviderWebhook"):
        assert "413" in ops[op_id]["responses"], op_id


def test_the_problem_types_of_parameters_stay_stable(client: Client, key: str) -> None:
    """Constraints moved into the schema keep the problem types clients match on."""
    ds = dataset(client, key)
    assert_problem(client.get("/v1/jobs?cursor=%28x", headers=auth(key)), 400, "invalid-cursor")
    headers = {**auth(key), "Content-Type": "application/jsonl", "Idempotency-Key": "has space"}
    r = client.post(f"/v1/datasets/{ds}/batches", content=b"{}\n", headers=headers)
    assert_problem(r, 400, "invalid-idempotency-key")
    r = client.post("/v1/inspect", json={"example": {}, "format": "csv"}, headers=auth(key))
    assert any("format" in e["message"] for e in assert_problem(r, 400)["errors"])


# -- 415 for every JSON body ----------------------------------------------------------------------

NO_BODY = {  # POST routes that take no body, and why they may ignore its media type
    "cancelJob": "no body",
    "enableSubscription": "no body",
    "retryDelivery": "no body",
    "receiveProviderWebhook": "signed raw bytes: the signature, not the media type, is checked",
}


def body_routes(app: Litestar) -> list[tuple[str, str, str]]:
    """(operation id, method, path) of every POST/PUT/PATCH route of the API (the web UI's form
    posts under /ui take application/x-www-form-urlencoded, as forms do: tests/ui)."""
    out: list[tuple[str, str, str]] = []
    for route in app.routes:
        if isinstance(route, HTTPRoute) and not route.path.startswith("/ui/"):
            for handler in route.route_handlers:
                takes_body = (
                    handler.parsed_data_field is not None or "body" in handler.parsed_fn_signature.parameters
                )
                if handler.operation_id in NO_BODY and NO_BODY[handler.operation_id] == "no body":
                    assert not takes_body, f"{handler.operation_id} takes a body now: drop it from NO_BODY"
                for method in sorted(handler.http_methods & {"POST", "PUT", "PATCH"}):
                    out.append((str(handler.operation_id), str(method), route.path))
    return out


def test_every_json_route_answers_415_to_other_media_types(
    app: Litestar, client: Client, key: str, state: State
) -> None:
    ds = dataset(client, key)
    routes = body_routes(app)
    assert {op for op, _m, _p in routes} >= set(NO_BODY)
    checked = []
    for op_id, method, template in routes:
        if op_id in NO_BODY:
            continue
        path = template.replace("{dataset_id:str}", ds)
        path = path.replace("{job_id:str}", "job_0").replace("{provider_id:str}", "prov_0")
        assert "{" not in path, f"{op_id}: fill in the path parameters of {template}"
        before = stored(state)
        for media in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded"):
            r = client.request(
                method,
                path,
                content=b'{"name": "x", "kind": "chat"}',
                headers={**auth(key), "Content-Type": media},
            )
            assert_problem(r, 415, "unsupported-media-type")
        r = client.request(method, path, content=b"{}", headers=auth(key))  # no Content-Type at all
        assert_problem(r, 415, "unsupported-media-type")
        assert stored(state) == before, f"{op_id} stored something"
        checked.append(op_id)
    assert {"createDataset", "startBuild", "pushBatch", "inspectExample"} <= set(checked)
    assert len(checked) == len(routes) - len(NO_BODY)


@pytest.mark.parametrize(
    "media",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "APPLICATION/JSON",
    ],
)
def test_json_and_structured_json_types_are_accepted(client: Client, key: str, media: str) -> None:
    r = client.post(
        "/v1/datasets", content=b'{"name": "x", "kind": "chat"}', headers={**auth(key), "Content-Type": media}
    )
    assert r.status_code == 201, r.text


# -- body caps checked before reading -------------------------------------------------------------


@contextmanager
def serve(app: Litestar) -> Iterator[int]:
    """The app on a real uvicorn server (a free 127.0.0.1 port), in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def announce_and_stall(port: int, path: str, headers: dict[str, str], announced: int) -> int:
    """POST announcing `announced` bytes, send 1 MiB of them and stop: the status of the answer,
    which can only come if the server decided without reading the body (else a timeout)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {announced}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + b"{" + b" " * (MiB - 1))
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"POST {path}: no answer while the body was incomplete: the server is reading it")
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_a_60_mb_webhook_to_an_unknown_provider_is_refused_without_reading_it(
    app: Litestar, client: Client, key: str
) -> None:
    known = client.post("/v1/providers", json=provider(webhook_secret=SECRET), headers=auth(key)).json()
    with serve(app) as port:
        json_type = {"Content-Type": "application/json"}
        unknown = "/v1/providers/prov_000000000000aaaaaaaaaaaaaaaa/webhooks"
        assert announce_and_stall(port, unknown, json_type, 60 * 10**6) == 404
        assert announce_and_stall(port, known["webhook_url"], json_type, 60 * 10**6) == 413
    over = b"{" + b" " * 1024 * 1024 + b"}"  # just over the 1 MiB default
    assert_problem(client.post(known["webhook_url"], content=over), 413, "body-too-large")


@pytest.mark.parametrize(
    ("path", "media"), [("/v1/inspect", "application/json"), ("/v1/validate", "application/jsonl")]
)
def test_the_tools_refuse_a_large_body_before_reading_it(
    app: Litestar, client: Client, key: str, path: str, media: str
) -> None:
    with serve(app) as port:
        headers = {**auth(key), "Content-Type": media}
        assert announce_and_stall(port, path, headers, 60 * 10**6) == 413
    body = b'{"example": "' + b"x" * (4 * MiB) + b'"}'  # over the 4 MiB default, under the app's 64 MiB
    problem = assert_problem(client.post(path, content=body, headers=headers), 413, "body-too-large")
    assert str(4 * MiB) in problem["detail"]


# -- job retention --------------------------------------------------------------------------------


def _ttls(state: State, job_id: str) -> tuple[int, int]:
    return int(state.r.ttl(f"tuneset:job:{job_id}")), int(state.r.ttl(f"tuneset:job:{job_id}:events"))  # type: ignore[arg-type]


def test_a_finished_job_expires_and_a_queued_one_does_not(
    client: Client, key: str, state: State, settings: Settings, enqueued: list[Any]
) -> None:
    ds = dataset(client, key)
    finished = client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth(key)).json()["job_id"]
    waiting = client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth(key)).json()["job_id"]
    assert _ttls(state, finished) == (-1, -1)  # queued: kept
    assert client.post(f"/v1/jobs/{finished}/cancel", headers=auth(key)).json()["status"] == "cancelled"
    for ttl in _ttls(state, finished):
        assert 1200 < ttl <= 1234  # the app's TUNESET_JOB_RETENTION_S
    assert _ttls(state, waiting) == (-1, -1)
    running = State.from_url(settings.redis_url)
    assert running.jobs.start(waiting, "planning")
    assert _ttls(state, waiting) == (-1, -1)
    # a worker's State knows no setting: the job keeps the retention it was created with
    assert running.job_retention_s != 1234
    assert running.jobs.fail(waiting, ErrorCode.internal_error, "y")
    assert 1200 < _ttls(state, waiting)[0] <= 1234


def test_listing_skips_and_forgets_expired_jobs(
    client: Client, key: str, state: State, enqueued: list[Any]
) -> None:
    ds = dataset(client, key)
    ids = [
        client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth(key)).json()["job_id"]
        for _ in range(3)
    ]
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth(key))
    state.r.pexpire(f"tuneset:job:{ids[1]}", 1)  # as if its retention had passed
    state.r.pexpire(f"tuneset:job:{ids[1]}:events", 1)
    deadline = time.monotonic() + 5
    while state.r.exists(f"tuneset:job:{ids[1]}"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    listed = client.get("/v1/jobs?order=asc", headers=auth(key)).json()
    assert [j["id"] for j in listed["items"]] == [ids[0], ids[2]]
    assert state.r.zrange("tuneset:t:acme:jobs", 0, -1) == [ids[0], ids[2]]  # removed from the index
    assert [j["id"] for j in client.get("/v1/jobs?status=queued", headers=auth(key)).json()["items"]] == [
        ids[2],
        ids[0],
    ]
    assert_problem(client.get(f"/v1/jobs/{ids[1]}", headers=auth(key)), 404)


# -- retry rate limit -----------------------------------------------------------------------------


def test_delivery_retries_are_rate_limited_per_tenant(client: Client, key: str, state: State) -> None:
    other = state.create_key("globex")

    def retry(api_key: str) -> Any:
        return client.post("/v1/webhooks/deliveries/dlv_0/retry", headers=auth(api_key))

    for _ in range(3):  # TUNESET_RETRY_RATE_LIMIT of the fixture
        assert_problem(retry(key), 404)
    refused = retry(key)
    assert_problem(refused, 429, "too-many-requests")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert_problem(retry(other), 404)  # another tenant has its own window
    assert 0 < int(state.r.ttl("tuneset:rate:retry:acme")) <= 60  # type: ignore[arg-type]  # the counter expires
