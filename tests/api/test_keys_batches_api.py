"""Over HTTP: admin-only key management, undoing a push (DELETE a batch), jobs by dataset and in
either order, and one timestamp format (RFC 3339) in every answer and webhook payload."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from service.jobs import decode_spec
from service.settings import Settings
from service.store.state import State
from tests.api.test_api import (
    GOOD,
    Client,
    assert_problem,
    auth,
    blob_files,
    dataset,
    make_dataset,
    push,
)
from tests.conftest import jsonl
from workers.notify import payload_of


@pytest.fixture
def key(state: State) -> str:
    return state.create_key("acme")


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _recent(text: str) -> bool:
    assert RFC3339.match(text), text
    return abs(datetime.fromisoformat(text).timestamp() - time.time()) < 60


def test_keys_are_managed_with_an_admin_key_only(client: Client, state: State) -> None:
    admin = state.create_key("ops", admin=True)
    plain = state.create_key("acme")
    state.r.hset("tuneset:keys", "0" * 64, "legacy")  # a key made before ids and hints were kept
    assert_problem(client.get("/v1/keys"), 401, "unauthorized")
    assert_problem(client.get("/v1/keys", headers=auth(plain)), 403, "forbidden")
    assert_problem(client.post("/v1/keys", json={"tenant": "x"}, headers=auth(plain)), 403)

    items = client.get("/v1/keys", headers=auth(admin)).json()["items"]
    assert (
        [(k["tenant"], k["admin"], k["hint"]) for k in items]
        == [
            ("acme", False, plain[-4:]),  # newest first; the key itself is never listed
            ("ops", True, admin[-4:]),
            ("legacy", False, None),
        ]
    )
    assert all(plain not in str(k) and admin not in str(k) for k in items)
    assert _recent(items[0]["created_at"])
    assert items[2]["created_at"] is None
    only = client.get("/v1/keys", params={"tenant": "acme"}, headers=auth(admin)).json()["items"]
    assert [k["tenant"] for k in only] == ["acme"]
    assert_problem(client.get("/v1/keys", params={"tenant": "a b"}, headers=auth(admin)), 400)

    made = client.post("/v1/keys", json={"tenant": "globex"}, headers=auth(admin))
    assert made.status_code == 201, made.text
    new_key = made.json()["key"]
    assert new_key.startswith("ts_")
    assert made.json()["admin"] is False
    assert client.get("/v1/datasets", headers=auth(new_key)).status_code == 200
    assert_problem(client.post("/v1/keys", json={"tenant": "g", "extra": 1}, headers=auth(admin)), 400)

    acme_id = items[0]["id"]
    assert client.delete(f"/v1/keys/{acme_id}", headers=auth(admin)).status_code == 204
    assert_problem(client.get("/v1/datasets", headers=auth(plain)), 401)  # refused from now on
    assert_problem(client.delete(f"/v1/keys/{acme_id}", headers=auth(admin)), 404, "not-found")
    assert client.delete(f"/v1/keys/{items[2]['id']}", headers=auth(admin)).status_code == 204
    assert not state.r.hexists("tuneset:keys", "0" * 64)


def test_deleting_a_batch_undoes_its_push(client: Client, key: str, settings: Settings) -> None:
    other = State.from_url(settings.redis_url).create_key("globex")
    ds = make_dataset(client, key)
    batches = [
        push(client, key, ds, jsonl(*GOOD[i : i + 2]), **{"Idempotency-Key": f"k{i}"}).json()
        for i in (0, 2, 4)
    ]
    assert len(blob_files(settings)) == 3
    middle = batches[1]["id"]
    assert_problem(client.delete(f"/v1/datasets/{ds}/batches/{middle}", headers=auth(other)), 404)
    assert client.delete(f"/v1/datasets/{ds}/batches/{middle}", headers=auth(key)).status_code == 204
    counts = dataset(client, key, ds)
    assert (counts["batches"], counts["examples"]) == (2, 4)
    assert counts["bytes"] == batches[0]["bytes"] + batches[2]["bytes"]
    listed = client.get(f"/v1/datasets/{ds}/batches", headers=auth(key)).json()["items"]
    assert [b["id"] for b in listed] == [batches[0]["id"], batches[2]["id"]]
    assert len(blob_files(settings)) == 2
    assert_problem(client.delete(f"/v1/datasets/{ds}/batches/{middle}", headers=auth(key)), 404)
    assert_problem(client.delete(f"/v1/datasets/ds_0/batches/{middle}", headers=auth(key)), 404)

    # the key it was pushed with is free again: the same push stores the batch again
    again = push(client, key, ds, jsonl(*GOOD[2:4]), **{"Idempotency-Key": "k2"})
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != middle
    assert dataset(client, key, ds)["examples"] == 6
    replay = push(client, key, ds, jsonl(*GOOD[0:2]), **{"Idempotency-Key": "k0"})
    assert replay.headers["Idempotent-Replayed"] == "true"  # an undeleted batch still replays


def test_jobs_by_dataset_newest_first_or_in_order(client: Client, key: str, state: State) -> None:
    a, b = make_dataset(client, key, name="a"), make_dataset(client, key, name="b")
    made = {
        ds: [state.jobs.create("acme", decode_spec("build", {"dataset_id": ds}))["id"] for _ in range(3)]
        for ds in (a, b)
    }
    state.jobs.cancel(made[a][1])

    def ids(**params: str | int) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            query = {**params, "limit": 1, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/jobs", params=query, headers=auth(key)).json()
            out += [j["id"] for j in page["items"]]
            if (cursor := page["next_cursor"]) is None:
                return out

    assert ids(dataset_id=a) == sorted(made[a], reverse=True)
    assert ids(dataset_id=a, order="asc") == sorted(made[a])
    assert ids(dataset_id=b, status="queued") == sorted(made[b], reverse=True)
    assert ids(dataset_id=a, status="cancelled") == [made[a][1]]
    assert ids() == sorted(made[a] + made[b], reverse=True)
    assert_problem(client.get("/v1/jobs", params={"dataset_id": "ds_0"}, headers=auth(key)), 404)
    other = state.create_key("globex")  # another tenant's dataset does not exist for this one
    assert_problem(client.get("/v1/jobs", params={"dataset_id": a}, headers=auth(other)), 404)


def test_every_time_is_rfc3339(client: Client, key: str, state: State) -> None:
    ds = make_dataset(client, key)
    assert _recent(dataset(client, key, ds)["created_at"])
    pushed = push(client, key, ds, jsonl(*GOOD[:2])).json()
    assert _recent(pushed["created_at"])
    listed = client.get(f"/v1/datasets/{ds}/batches", headers=auth(key)).json()["items"]
    assert listed[0]["created_at"] == pushed["created_at"]
    job_id = state.jobs.create("acme", decode_spec("build", {"dataset_id": ds}))["id"]
    state.jobs.start(job_id, "planning")
    state.jobs.succeed(job_id, {"artifacts": []})
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
    assert all(_recent(job[f]) for f in ("created_at", "started_at", "finished_at"))
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]  # fixed width: sortable as text
    ended = state.jobs.get(job_id)
    assert ended is not None
    assert payload_of(ended)["timestamp"] == job["finished_at"]  # the webhook payload's, the same
