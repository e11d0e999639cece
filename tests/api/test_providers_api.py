"""Provider profiles, webhook subscriptions and the upload / fine-tune recipe, through the API.

The key is encrypted at rest and never answered; URLs pass the SSRF guard at registration; a
recipe that cannot be carried out is a 422 before any job exists.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from litestar import Litestar
from litestar.testing import TestClient
from pydantic import SecretStr

import service.api.builds
import service.api.providers
import service.jobs.chain
from service.api.app import create_app
from service.queue import queue_of
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import State
from service.webhooks.signing import sign
from tests.api.test_api import GOOD, assert_problem, auth, make_dataset, push
from tests.conftest import jsonl

Client = TestClient[Litestar]
API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path,
        secret_key=SecretStr(new_key()),
        webhook_allow_hosts=["127.0.0.1"],
    )


@pytest.fixture
def client(settings: Settings) -> Any:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def key(state: State) -> str:
    return state.create_key("acme")


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    calls: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(
        service.jobs.chain, "enqueue", lambda s, task, args, queue=None: calls.append((task, args))
    )
    return calls


def _provider(client: Client, key: str, **over: Any) -> dict[str, Any]:
    body = {"name": "fake", "base_url": "http://127.0.0.1:9/v1", "api_key": API_KEY, **over}
    r = client.post("/v1/providers", json=body, headers=auth(key))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_a_provider_key_is_stored_encrypted_and_never_answered(
    client: Client, key: str, state: State, settings: Settings
) -> None:
    created = _provider(client, key, webhook_secret="whsec_c2VjcmV0c2VjcmV0c2VjcmV0")
    assert created["api_key_hint"] == "cdef"
    assert created["webhook_secret_set"] is True
    assert created["webhook_url"] == f"/v1/providers/{created['id']}/webhooks"
    answers = [
        client.get("/v1/providers", headers=auth(key)).text,
        client.get("/v1/providers/fake", headers=auth(key)).text,
    ]
    keys: list[str] = state.r.keys("*")  # type: ignore[assignment]
    dump = "".join(str(state.r.hgetall(k)) for k in keys if state.r.type(k) == "hash")
    assert "api_key" in dump  # the profile is in the dump, encrypted
    for text in [*answers, dump]:
        assert API_KEY not in text
        assert "c2VjcmV0c2VjcmV0c2VjcmV0" not in text
    assert client.get("/v1/providers/fake", headers=auth(state.create_key("globex"))).status_code == 404
    assert_problem(
        client.post(
            "/v1/providers",
            json={"name": "fake", "base_url": "http://127.0.0.1:9/v1", "api_key": "x"},
            headers=auth(key),
        ),
        409,
    )
    assert client.delete("/v1/providers/fake", headers=auth(key)).status_code == 204
    assert client.get("/v1/providers/fake", headers=auth(key)).status_code == 404


@pytest.mark.parametrize(
    ("over", "named"),
    [
        ({"base_url": "http://10.0.0.1/v1"}, "private"),
        ({"base_url": "http://169.254.169.254/"}, "169.254.169.254"),
        ({"base_url": "file:///etc/passwd"}, "file"),
        ({"kind": "azure"}, "api_version"),
        ({"models": {"my-deploy": {"encoding": "nope", "max_tokens": 10}}}, "nope"),
    ],
)
def test_a_bad_provider_is_refused(client: Client, key: str, over: dict[str, Any], named: str) -> None:
    body = {"name": "p", "base_url": "http://127.0.0.1:9/v1", "api_key": API_KEY, **over}
    problem = assert_problem(client.post("/v1/providers", json=body, headers=auth(key)), 422)
    assert named in problem["detail"]


def test_without_a_secret_key_providers_are_a_503_naming_the_setting(
    redis_url: str, tmp_path: Path, state: State
) -> None:
    with TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path))) as c:
        body = {"name": "p", "base_url": "https://api.openai.com/v1", "api_key": API_KEY}
        problem = assert_problem(c.post("/v1/providers", json=body, headers=auth(state.create_key("x"))), 503)
        assert "TUNESET_SECRET_KEY" in problem["detail"]


def test_subscriptions_show_their_secret_once_and_refuse_private_urls(client: Client, key: str) -> None:
    r = client.post("/v1/webhooks/subscriptions", json={"url": "http://127.0.0.1:9/hook"}, headers=auth(key))
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["secret"].startswith("whsec_")
    listed = client.get("/v1/webhooks/subscriptions", headers=auth(key)).json()["items"]
    assert [s["id"] for s in listed] == [sub["id"]]
    assert "secret" not in listed[0]
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[::1]/", "ftp://127.0.0.1/"):
        assert_problem(client.post("/v1/webhooks/subscriptions", json={"url": url}, headers=auth(key)), 422)
    bad_type = {"url": "http://127.0.0.1:9/hook", "event_types": ["build.exploded"]}
    refused = assert_problem(client.post("/v1/webhooks/subscriptions", json=bad_type, headers=auth(key)), 400)
    assert any("build.exploded" in e["message"] for e in refused["errors"])  # the schema lists the types
    assert client.get("/v1/webhooks/deliveries", headers=auth(key)).json() == {
        "items": [],
        "next_cursor": None,
    }
    assert client.delete(f"/v1/webhooks/subscriptions/{sub['id']}", headers=auth(key)).status_code == 204


def test_a_build_with_upload_and_fine_tune_creates_the_waiting_jobs(
    client: Client, key: str, state: State, enqueued: list[Any]
) -> None:
    _provider(client, key)
    ds = make_dataset(client, key)
    assert push(client, key, ds, jsonl(*GOOD[:12])).status_code == 201
    recipe = {
        "model": "gpt-4o-mini",
        "upload": {"provider": "fake"},
        "fine_tune": {"suffix": "support", "hyperparameters": {"n_epochs": 2}},
        "callback_url": "http://127.0.0.1:9/hook",
    }
    r = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key))
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["callback_secret"].startswith("whsec_")
    assert [task for task, _ in enqueued] == ["tuneset.build"]  # the others wait for the build
    upload = state.jobs.get(started["upload_job_id"])
    fine_tune = state.jobs.get(started["fine_tune_job_id"])
    assert upload is not None
    assert fine_tune is not None
    assert (upload["status"], upload["stage"], fine_tune["stage"]) == ("queued", "waiting", "waiting")
    assert upload["spec"]["fine_tune_job"] == fine_tune["id"]
    assert fine_tune["spec"]["options"] == {
        "model": "gpt-4o-mini",
        "method": "supervised",
        "suffix": "support",
        "hyperparameters": {"n_epochs": 2},
    }
    build = state.jobs.get(started["job_id"])
    assert build is not None
    assert build["spec"]["upload_job"] == upload["id"]
    assert started["callback_secret"] not in str(build["spec"])  # stored encrypted


@pytest.mark.parametrize(
    ("recipe", "named"),
    [
        ({"fine_tune": {}}, "needs upload"),
        ({"upload": {"provider": "nope"}}, "nope"),
        ({"upload": {"provider": "fake"}, "outputs": {"report": {}}}, "openai_jsonl"),
        ({"callback_url": "http://10.1.2.3/hook"}, "private"),
    ],
)
def test_a_recipe_that_cannot_be_carried_out_is_a_422(
    client: Client, key: str, enqueued: list[Any], recipe: dict[str, Any], named: str
) -> None:
    _provider(client, key)
    ds = make_dataset(client, key)
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key)), 422)
    assert named in problem["detail"]
    assert enqueued == []


def test_a_profile_model_is_known_to_its_builds(client: Client, key: str, enqueued: list[Any]) -> None:
    _provider(client, key, models={"acme-deploy": {"encoding": "o200k_base", "max_tokens": 4096}})
    ds = make_dataset(client, key)
    recipe = {"model": "acme-deploy", "upload": {"provider": "fake"}}
    assert client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key)).status_code == 202
    plain = {"model": "acme-deploy"}  # without the profile the model is unknown
    assert (
        "acme-deploy"
        in assert_problem(client.post(f"/v1/datasets/{ds}/builds", json=plain, headers=auth(key)), 422)[
            "detail"
        ]
    )


def test_the_provider_webhook_receiver_rejects_bad_signatures(client: Client, key: str) -> None:
    created = _provider(client, key, webhook_secret="whsec_c2VjcmV0c2VjcmV0c2VjcmV0")
    url = created["webhook_url"]
    headers = {"webhook-id": "evt_1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}
    assert_problem(client.post(url, content=b'{"type": "x"}', headers=headers), 400)
    assert_problem(
        client.post("/v1/providers/prov_000000000000aaaaaaaaaaaaaaaa/webhooks", content=b"{}"), 404
    )


def test_the_provider_webhook_receiver_takes_a_fresh_signed_event_and_refuses_a_stale_one(
    client: Client, key: str, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"
    created = _provider(client, key, webhook_secret=secret)
    state.r.set(f"tuneset:ftjob:{created['id']}:ftjob-1", "job_follower")
    body = b'{"id":"evt_1","object":"event","type":"fine_tuning.job.succeeded","created_at":1,"data":{"id":"ftjob-1"}}'
    polls: list[Any] = []
    monkeypatch.setattr(
        service.api.providers, "enqueue", lambda s, task, args: polls.append((task, args, queue_of(s, task)))
    )
    now = int(time.time())
    fresh = client.post(created["webhook_url"], content=body, headers=sign(secret, "evt_1", now, body))
    stale = client.post(created["webhook_url"], content=body, headers=sign(secret, "evt_1", now - 3600, body))
    assert fresh.status_code == 200, fresh.text
    assert fresh.json() == {"received": True, "job_id": "job_follower"}
    assert polls == [("tuneset.fine_tune_poll", ["job_follower"], "tuneset.io")]  # only the fresh one, to io
    assert_problem(stale, 400)
