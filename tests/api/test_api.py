"""The HTTP API against a real redis-server: auth, tenant isolation, datasets, batches (real
conversations, bad input of every kind), idempotency, builds, jobs, SSE, artifacts, the
synchronous tools (equal to the CLI's JSON), health and metrics. No worker runs: enqueueing is
recorded instead."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import TestClient

import service.api.builds
import service.jobs.chain
from service.api.app import create_app
from service.api.batches import request_fingerprint
from service.cli import main as cli
from service.jobs import ErrorCode, decode_spec
from service.jobs.keys import job_key
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import State
from tests.conftest import DATA, jsonl, mtbench_conversations

Client = TestClient[Litestar]
GOOD = mtbench_conversations()


def sharegpt_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((DATA / "sharegpt_fastchat_dummy.json").read_text())
    return rows


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def jsonl_headers(key: str, **extra: str) -> dict[str, str]:
    return {**auth(key), "Content-Type": "application/jsonl", **extra}


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["type"].startswith("urn:tuneset:problem:")
    if slug is not None:
        assert body["type"] == f"urn:tuneset:problem:{slug}", body
    return body


@pytest.fixture
def keys(state: State) -> tuple[str, str]:
    return state.create_key("acme"), state.create_key("globex")


@pytest.fixture
def key(keys: tuple[str, str]) -> str:
    return keys[0]


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch, state: State) -> list[tuple[str, list[Any], str | None]]:
    """Records enqueues; each call checks the job was committed (queued) before it was sent."""
    calls: list[tuple[str, list[Any], str | None]] = []

    def fake(settings: Settings, task: str, args: list[Any], queue: str | None = None) -> None:
        job = state.jobs.get(args[0])
        assert job is not None, "enqueued before the job existed"
        assert job["status"] == "queued", "enqueued before the job was committed"
        calls.append((task, args, job["status"]))

    monkeypatch.setattr(service.jobs.chain, "enqueue", fake)
    return calls


def make_dataset(client: Client, key: str, kind: str = "chat", name: str = "d") -> str:
    r = client.post("/v1/datasets", json={"name": name, "kind": kind}, headers=auth(key))
    assert r.status_code == 201, r.text
    ident: str = r.json()["id"]
    return ident


def push(client: Client, key: str, ds: str, body: bytes, query: str = "", **headers: str) -> httpx.Response:
    return client.post(
        f"/v1/datasets/{ds}/batches{query}", content=body, headers=jsonl_headers(key, **headers)
    )


def dataset(client: Client, key: str, ds: str) -> dict[str, Any]:
    r = client.get(f"/v1/datasets/{ds}", headers=auth(key))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def blob_files(settings: Settings) -> list[Path]:
    root = settings.blob_root
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            events.append(fields)
    return events


# -- auth and health --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ts_not_a_key"},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer "},
    ],
)
def test_v1_needs_a_valid_bearer_key(client: Client, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/datasets"), ("POST", "/v1/datasets"), ("GET", "/v1/jobs/job_x")]:
        r = client.request(method, path, headers=headers, json={"name": "x", "kind": "chat"})
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_livez_readyz_and_unknown_routes(client: Client) -> None:
    assert client.get("/livez").json() == {"status": "ok", "checks": {}}
    assert client.get("/readyz").json() == {"status": "ok", "checks": {"redis": "ok", "threads": "ok"}}
    assert_problem(client.get("/nowhere"), 404, "not-found")
    assert_problem(client.put("/livez"), 405, "method-not-allowed")


def test_readyz_is_a_503_problem_when_redis_is_unreachable(tmp_path: Path) -> None:
    from service.run import free_port

    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path))
    with TestClient(app) as c:
        assert_problem(c.get("/readyz"), 503, "not-ready")
        assert c.get("/livez").status_code == 200
        # state errors elsewhere are a 503 problem too, not a 500
        assert_problem(c.get("/v1/datasets", headers=auth("ts_x")), 503, "unavailable")


def test_metrics_count_requests_batches_and_builds(client: Client, key: str, enqueued: list[Any]) -> None:
    ds = make_dataset(client, key)
    assert push(client, key, ds, jsonl(*GOOD[:3])).status_code == 201
    assert push(client, key, ds, b"{bad\n").status_code == 422
    assert client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth(key)).status_code == 202
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'tuneset_http_requests_total{method="POST",route="/v1/datasets",status="201"} 1.0' in text
    assert 'route="/v1/datasets/{dataset_id}/batches",status="422"' in text
    assert 'tuneset_batches_total{outcome="stored"} 1.0' in text
    assert 'tuneset_batches_total{outcome="rejected"} 1.0' in text
    assert "tuneset_batch_examples_total 3.0" in text
    assert "tuneset_builds_total 1.0" in text


# -- datasets ---------------------------------------------------------------------------------


def test_dataset_crud_and_cursor_pagination(client: Client, key: str, settings: Settings) -> None:
    ids = sorted(make_dataset(client, key, name=f"set {i}") for i in range(5))
    r = client.get(f"/v1/datasets/{ids[0]}", headers=auth(key))
    assert r.json() == {
        "id": ids[0],
        "name": r.json()["name"],
        "kind": "chat",
        "description": "",
        "created_at": r.json()["created_at"],
        "batches": 0,
        "examples": 0,
        "bytes": 0,
    }
    for order, expected in (({}, ids[::-1]), ({"order": "desc"}, ids[::-1]), ({"order": "asc"}, ids)):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2, **order, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/datasets", params=params, headers=auth(key)).json()
            pages += 1
            seen += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected  # newest first unless order=asc
        assert pages == 3
    assert_problem(client.get("/v1/datasets?order=up", headers=auth(key)), 400)
    assert_problem(client.get("/v1/datasets?limit=0", headers=auth(key)), 400, "invalid-request")
    assert_problem(client.get("/v1/datasets?cursor=%28x", headers=auth(key)), 400, "invalid-cursor")

    assert push(client, key, ids[1], jsonl(*GOOD[:4])).status_code == 201
    counts = dataset(client, key, ids[1])
    assert (counts["batches"], counts["examples"]) == (1, 4)
    assert counts["bytes"] > 0
    assert len(blob_files(settings)) == 1
    assert client.delete(f"/v1/datasets/{ids[1]}", headers=auth(key)).status_code == 204
    assert blob_files(settings) == []
    assert_problem(client.get(f"/v1/datasets/{ids[1]}", headers=auth(key)), 404, "not-found")
    assert_problem(client.delete(f"/v1/datasets/{ids[1]}", headers=auth(key)), 404, "not-found")
    left = client.get("/v1/datasets", headers=auth(key)).json()
    assert [d["id"] for d in left["items"]] == [*ids[2:][::-1], ids[0]]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "kind": "images"},
        {"name": "", "kind": "chat"},
        {"kind": "chat"},
        {"name": "x", "kind": "chat", "owner": "me"},
        [1, 2],
    ],
)
def test_a_bad_dataset_body_is_a_400_problem(client: Client, key: str, body: Any) -> None:
    problem = assert_problem(client.post("/v1/datasets", json=body, headers=auth(key)), 400)
    assert problem["errors"] or problem["type"].endswith("invalid-request")


# -- tenant isolation -------------------------------------------------------------------------


def test_another_tenants_ids_answer_404_on_every_endpoint(
    client: Client, keys: tuple[str, str], state: State, settings: Settings, enqueued: list[Any]
) -> None:
    mine, theirs = keys
    ds = make_dataset(client, mine)
    assert push(client, mine, ds, jsonl(*GOOD[:3])).status_code == 201
    job_id = client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth(mine)).json()["job_id"]
    LocalBlobStore(settings.blob_root).put(f"acme/jobs/{job_id}/report.json", b"{}")
    state.r.hset(
        f"tuneset:job:{job_id}",
        "result",
        json.dumps(
            {"artifacts": [{"name": "report.json", "key": f"acme/jobs/{job_id}/report.json", "size": 2}]}
        ),
    )
    before = dataset(client, mine, ds)

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/datasets/{ds}", {}),
        ("DELETE", "/v1/datasets/{ds}", {}),
        ("GET", "/v1/datasets/{ds}/batches", {}),
        ("POST", "/v1/datasets/{ds}/batches", {"content": jsonl(*GOOD[:2])}),
        ("POST", "/v1/datasets/{ds}/builds", {"json": {}}),
        ("GET", "/v1/jobs/{job}", {}),
        ("POST", "/v1/jobs/{job}/cancel", {}),
        ("GET", "/v1/jobs/{job}/events", {}),
        ("GET", "/v1/jobs/{job}/artifacts", {}),
        ("GET", "/v1/jobs/{job}/artifacts/report.json", {}),
    ]
    for method, template, kwargs in requests:
        other = client.request(
            method,
            template.format(ds=ds, job=job_id),
            headers=jsonl_headers(theirs) if "content" in kwargs else auth(theirs),
            **kwargs,
        )
        unknown_ds, unknown_job = "ds_" + "0" * 28, "job_" + "0" * 28
        unknown = client.request(
            method,
            template.format(ds=unknown_ds, job=unknown_job),
            headers=jsonl_headers(theirs) if "content" in kwargs else auth(theirs),
            **kwargs,
        )
        a = assert_problem(other, 404, "not-found")
        b = assert_problem(unknown, 404, "not-found")
        assert (a["title"], a["type"]) == (b["title"], b["type"]), (method, template)
        assert a["detail"].replace(ds, "ID").replace(job_id, "ID") == b["detail"].replace(
            unknown_ds, "ID"
        ).replace(unknown_job, "ID")
    # the lists are per tenant, and nothing of the owner's changed
    assert client.get("/v1/datasets", headers=auth(theirs)).json() == {"items": [], "next_cursor": None}
    assert client.get("/v1/jobs", headers=auth(theirs)).json() == {"items": [], "next_cursor": None}
    assert dataset(client, mine, ds) == before
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(mine)).json()
    assert job["status"] == "queued"
    assert job["cancel_requested"] is False
    assert len(enqueued) == 1


# -- batches ----------------------------------------------------------------------------------


def test_push_real_sharegpt_rows_as_jsonl(client: Client, key: str, settings: Settings) -> None:
    rows = sharegpt_rows()
    ds = make_dataset(client, key)
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    r = client.post(
        f"/v1/datasets/{ds}/batches",
        content=body,
        headers={**auth(key), "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["examples"] == len(rows)
    assert out["skipped"] == 0
    assert out["problems"] == []
    assert out["format"] == "sharegpt"
    assert out["dataset_id"] == ds
    stored = LocalBlobStore(settings.blob_root).get(f"acme/{ds}/batches/{out['id']}.jsonl")
    assert len(stored) == out["bytes"]
    lines = stored.splitlines()
    assert len(lines) == len(rows)
    first = json.loads(lines[0])
    assert set(first) == {"messages"}
    assert first["messages"][0]["content"] == rows[0]["conversations"][0]["value"]
    counts = dataset(client, key, ds)
    assert (counts["batches"], counts["examples"], counts["bytes"]) == (1, len(rows), len(stored))
    batches = client.get(f"/v1/datasets/{ds}/batches", headers=auth(key)).json()["items"]
    assert [b["id"] for b in batches] == [out["id"]]
    assert batches[0]["format"] == "sharegpt"


def test_push_mtbench_as_json_examples(client: Client, key: str) -> None:
    ds = make_dataset(client, key)
    r = client.post(f"/v1/datasets/{ds}/batches", json={"examples": GOOD}, headers=auth(key))
    assert r.status_code == 201, r.text
    assert (r.json()["examples"], r.json()["format"]) == (len(GOOD), "openai")
    assert dataset(client, key, ds)["examples"] == len(GOOD)


def test_invalid_json_on_line_7_of_10_is_a_422_naming_it_and_stores_nothing(
    client: Client, key: str, settings: Settings
) -> None:
    ds = make_dataset(client, key)
    lines = jsonl(*GOOD[:10]).splitlines(keepends=True)
    lines[6] = b'{"messages": [{"role": "user", "content": "hi"}\n'
    problem = assert_problem(push(client, key, ds, b"".join(lines)), 422, "invalid-examples")
    assert [(e["line"], e["code"]) for e in problem["errors"]] == [(7, "invalid_json")]
    assert set(problem["errors"][0]) == {"line", "message_index", "code", "message"}
    assert dataset(client, key, ds)["batches"] == 0
    assert blob_files(settings) == []


def test_every_bad_line_is_listed(client: Client, key: str) -> None:
    ds = make_dataset(client, key)
    bad_weight = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 3}]
    }
    body = jsonl(GOOD[0], bad_weight, GOOD[1], {"messages": "nope"})
    problem = assert_problem(push(client, key, ds, body), 422)
    assert [(e["line"], e["code"], e["message_index"]) for e in problem["errors"]] == [
        (2, "invalid_weight", 1),
        (4, "invalid_messages", None),
    ]


def test_undecodable_bodies_are_4xx_problems_never_500(client: Client, key: str, settings: Settings) -> None:
    ds = make_dataset(client, key)
    deep = b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    utf8 = b'{"messages": [{"role": "user", "content": "caf\xff"}]}'
    for body in (utf8, deep):
        problem = assert_problem(push(client, key, ds, body + b"\n"), 422)
        assert problem["errors"][0]["line"] == 1
        assert problem["errors"][0]["code"] == "invalid_json"
        # the same as a JSON body, and on the endpoints that decode JSON themselves
        r = client.post(
            f"/v1/datasets/{ds}/batches",
            content=b'{"examples": [' + body + b"]}",
            headers={**auth(key), "Content-Type": "application/json"},
        )
        assert_problem(r, 400)
        for path in ("/v1/datasets", "/v1/inspect", f"/v1/datasets/{ds}/builds"):
            wrapped = b'{"name": "x", "kind": "chat", "example": ' + body + b"}"
            r = client.post(path, content=wrapped, headers={**auth(key), "Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (path, r.status_code)
            assert r.headers["content-type"].startswith("application/problem+json")
    assert dataset(client, key, ds)["batches"] == 0
    assert blob_files(settings) == []


def test_a_body_over_the_limit_is_413(client: Client, key: str, settings: Settings) -> None:
    ds = make_dataset(client, key)
    line = json.dumps(GOOD[0]).encode() + b"\n"
    big = line * (settings.max_body_bytes // len(line) + 2)
    assert_problem(push(client, key, ds, big), 413, "body-too-large")
    # a small gzip body that inflates beyond the limit too
    bomb = gzip.compress(big * 4)
    assert len(bomb) < settings.max_body_bytes
    assert_problem(push(client, key, ds, bomb, **{"Content-Encoding": "gzip"}), 413, "body-too-large")
    assert dataset(client, key, ds)["batches"] == 0
    assert blob_files(settings) == []


def test_unknown_format_unsupported_types_and_encodings(client: Client, key: str) -> None:
    ds = make_dataset(client, key)
    body = jsonl(*GOOD[:2])
    assert_problem(push(client, key, ds, body, "?format=csv"), 400, "unknown-format")
    r = client.post(
        f"/v1/datasets/{ds}/batches", content=body, headers={**auth(key), "Content-Type": "text/csv"}
    )
    assert_problem(r, 415, "unsupported-media-type")
    assert_problem(push(client, key, ds, body, **{"Content-Encoding": "br"}), 415, "unsupported-encoding")
    assert_problem(push(client, key, ds, b"not gzip", **{"Content-Encoding": "gzip"}), 400, "invalid-gzip")
    assert_problem(push(client, key, ds, b"\n\n"), 422, "empty-batch")
    assert dataset(client, key, ds)["batches"] == 0


def test_format_override_and_gzip(client: Client, key: str) -> None:
    ds = make_dataset(client, key)
    alpaca = [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(5)]
    r = push(client, key, ds, gzip.compress(jsonl(*alpaca)), "?format=alpaca", **{"Content-Encoding": "gzip"})
    assert r.status_code == 201, r.text
    assert (r.json()["examples"], r.json()["format"]) == (5, "alpaca")
    # forcing the wrong format makes every line bad
    problem = assert_problem(push(client, key, ds, jsonl(*GOOD[:2]), "?format=alpaca"), 422)
    assert [e["line"] for e in problem["errors"]] == [1, 2]


def test_on_invalid_skip_stores_the_good_lines_and_reports_the_rest(
    client: Client, key: str, settings: Settings
) -> None:
    ds = make_dataset(client, key)
    lines = jsonl(*GOOD[:10]).splitlines(keepends=True)
    lines[2] = b"{broken\n"
    lines[8] = b'{"messages": [{"role": "wizard", "content": "x"}]}\n'
    r = push(client, key, ds, b"".join(lines), "?on_invalid=skip")
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["examples"], out["skipped"]) == (8, 2)
    assert [(p["line"], p["code"]) for p in out["problems"]] == [(3, "invalid_json"), (9, "unknown_role")]
    stored = LocalBlobStore(settings.blob_root).get(f"acme/{ds}/batches/{out['id']}.jsonl")
    assert len(stored.splitlines()) == 8
    assert dataset(client, key, ds)["examples"] == 8
    # nothing valid at all: nothing stored even with skip
    assert_problem(push(client, key, ds, b"{x\n", "?on_invalid=skip"), 422, "invalid-examples")
    assert dataset(client, key, ds)["batches"] == 1


def test_a_dataset_takes_only_its_kind(client: Client, key: str) -> None:
    pref = make_dataset(client, key, kind="preference")
    problem = assert_problem(push(client, key, pref, jsonl(*GOOD[:2])), 422)
    assert {e["code"] for e in problem["errors"]} == {"invalid_preference"}
    dpo = {
        "input": {"messages": [{"role": "user", "content": "2+2?"}]},
        "preferred_output": [{"role": "assistant", "content": "4"}],
        "non_preferred_output": [{"role": "assistant", "content": "5"}],
    }
    r = push(client, key, pref, jsonl(dpo))
    assert r.status_code == 201
    assert r.json()["format"] == "preference"
    chat_ds = make_dataset(client, key)
    problem = assert_problem(push(client, key, chat_ds, jsonl(dpo)), 422)
    assert [(e["line"], e["code"]) for e in problem["errors"]] == [(1, "missing_messages")]


def test_idempotency_key_replays_and_refuses_another_body(
    client: Client, key: str, state: State, settings: Settings
) -> None:
    ds = make_dataset(client, key)
    body = jsonl(*GOOD[:5])
    first = push(client, key, ds, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    again = push(client, key, ds, body, **{"Idempotency-Key": "k-1"})
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert dataset(client, key, ds)["batches"] == 1
    assert len(blob_files(settings)) == 1

    other = push(client, key, ds, jsonl(*GOOD[5:7]), **{"Idempotency-Key": "k-1"})
    assert_problem(other, 422, "idempotency-key-reused")
    assert dataset(client, key, ds)["batches"] == 1

    # a key whose first request is still running answers 409
    state.idempotency_begin("acme", "k-2", request_fingerprint(ds, "", body), 60)
    assert_problem(push(client, key, ds, body, **{"Idempotency-Key": "k-2"}), 409, "request-in-flight")
    # a failed request does not hold its key
    assert push(client, key, ds, b"{bad\n", **{"Idempotency-Key": "k-3"}).status_code == 422
    assert push(client, key, ds, body, **{"Idempotency-Key": "k-3"}).status_code == 201
    # keys are per tenant
    assert dataset(client, key, ds)["batches"] == 2


# -- builds and jobs --------------------------------------------------------------------------


def test_start_build_creates_a_queued_job_then_enqueues(
    client: Client, key: str, enqueued: list[Any], state: State
) -> None:
    ds = make_dataset(client, key)
    assert push(client, key, ds, jsonl(*GOOD[:12])).status_code == 201
    recipe = {"model": "gpt-4o-mini", "policies": {"consecutive_same_role": "fix"}, "train_on": "last"}
    r = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert enqueued == [("tuneset.build", [job_id], "queued")]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
    assert job["status"] == "queued"
    assert job["kind"] == "build"
    assert job["progress"] == {"done": 0, "total": 0}
    assert set(job) >= {
        "id",
        "kind",
        "status",
        "stage",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "error",
    }
    spec = state.jobs.get(job_id)
    assert spec is not None
    assert spec["spec"]["dataset_id"] == ds
    assert spec["spec"]["recipe"]["policies"] == {"consecutive_same_role": "fix"}
    assert spec["spec"]["recipe"]["train_on"] == "last"
    outputs = {
        "openai_jsonl": {"max_file_bytes": 500 * 1024 * 1024},
        "targets": None,
        "packed": None,
        "tokenized": None,
        "report": {},
    }
    assert spec["spec"]["outputs"] == outputs


def test_outputs_select_files_and_the_jsonl_size_limit_is_checked(
    client: Client, key: str, enqueued: list[Any], state: State
) -> None:
    ds = make_dataset(client, key)
    recipe = {
        "outputs": {
            "packed": {"seq_len": 1024, "template": "chatml"},
            "openai_jsonl": {"max_file_bytes": 4096},
        }
    }
    r = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key))
    assert r.status_code == 202, r.text
    spec = state.jobs.get(r.json()["job_id"])
    assert spec is not None
    outputs = spec["spec"]["outputs"]
    assert set(outputs) == {"openai_jsonl", "targets", "packed", "tokenized", "report"}
    assert outputs["report"] is None
    assert outputs["tokenized"] is None
    assert outputs["openai_jsonl"] == {"max_file_bytes": 4096}
    assert outputs["packed"]["seq_len"] == 1024
    over = {"outputs": {"openai_jsonl": {"max_file_bytes": 513 * 1024 * 1024}}}  # above the Files API limit
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/builds", json=over, headers=auth(key)), 400)
    assert "max_file_bytes" in str(problem["errors"]), problem
    assert len(enqueued) == 1


@pytest.mark.parametrize(
    ("recipe", "named"),
    [
        ({"policies": {"no_such_code": "fix"}}, "no_such_code"),
        ({"policies": {"invalid_json": "keep"}}, "invalid_json"),
        ({"policies": {"consecutive_same_role": "explode"}}, "explode"),
        ({"policies": {"no_system_message": "fix"}}, "system prompt"),
        ({"model": "gpt-nope"}, "gpt-nope"),
        ({"outputs": {}}, "selects nothing"),
        ({"outputs": {"packed": {"template": "no-such-template"}}}, "no-such-template"),
    ],
)
def test_a_bad_recipe_is_a_422_naming_it(
    client: Client, key: str, enqueued: list[Any], recipe: dict[str, Any], named: str
) -> None:
    ds = make_dataset(client, key)
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key)), 422)
    assert named in problem["detail"]
    assert enqueued == []
    assert client.get("/v1/jobs", headers=auth(key)).json()["items"] == []


def test_an_unreachable_broker_fails_the_job_and_answers_503(
    client: Client, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(service.jobs.chain, "enqueue", down)
    ds = make_dataset(client, key)
    assert_problem(client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth(key)), 503)
    jobs = client.get("/v1/jobs", headers=auth(key)).json()["items"]
    assert [(j["status"], j["error"]["code"]) for j in jobs] == [("failed", "enqueue_failed")]


def test_jobs_get_list_filter_and_cancel(client: Client, key: str, state: State) -> None:
    created = [
        state.jobs.create("acme", decode_spec("build", {"dataset_id": "ds_x"}))["id"] for _ in range(6)
    ]
    ids = sorted(created)  # ids sort by creation time only to the millisecond
    state.jobs.start(ids[1], "planning")
    state.jobs.progress(ids[1], "validate", 3, 10)
    state.jobs.start(ids[2], "planning")
    state.jobs.fail(ids[2], ErrorCode.internal_error, "it broke")

    running = client.get(f"/v1/jobs/{ids[1]}", headers=auth(key)).json()
    assert (running["status"], running["stage"], running["progress"]) == (
        "running",
        "validate",
        {"done": 3, "total": 10},
    )
    assert running["started_at"] is not None
    assert running["finished_at"] is None
    failed = client.get(f"/v1/jobs/{ids[2]}", headers=auth(key)).json()
    assert failed["error"] == {"code": "internal_error", "message": "it broke"}
    assert failed["finished_at"] is not None

    everything = client.get("/v1/jobs", headers=auth(key)).json()
    assert [j["id"] for j in everything["items"]] == ids[::-1]  # newest first
    assert everything["next_cursor"] is None
    for order, expected in (("asc", [ids[0], *ids[3:]]), ("desc", [*ids[3:][::-1], ids[0]])):
        queued: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"status": "queued", "limit": 2, "order": order}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/jobs", params=params, headers=auth(key)).json()
            queued += [j["id"] for j in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert queued == expected
    assert_problem(client.get("/v1/jobs?status=bogus", headers=auth(key)), 400)

    r = client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth(key))
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("cancelled", True)
    r = client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth(key))  # running: the worker stops it
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)
    assert_problem(client.post(f"/v1/jobs/{ids[2]}/cancel", headers=auth(key)), 409, "job-finished")
    assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth(key)).status_code == 202  # idempotent


def test_job_events_over_sse_resume_after_last_event_id(client: Client, key: str, state: State) -> None:
    job_id = state.jobs.create("acme", decode_spec("build", {"dataset_id": "ds_x"}))["id"]
    state.jobs.start(job_id, "planning")
    state.jobs.progress(job_id, "validate", 5, 10)
    state.jobs.event(job_id, "log", {"message": "halfway"})
    state.jobs.progress(job_id, "validate", 10, 10)
    state.jobs.succeed(job_id, {"examples": 10})

    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(key)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.read().decode())
    assert [e["event"] for e in events] == ["status", "status", "progress", "log", "progress", "status"]
    assert json.loads(events[0]["data"]) == {"status": "queued"}
    assert json.loads(events[2]["data"]) == {"stage": "validate", "done": 5, "total": 10}
    assert json.loads(events[-1]["data"]) == {"status": "succeeded"}
    stored = state.jobs.events(job_id)
    assert [e["id"] for e in events] == [event_id for event_id, _, _ in stored]

    resume = events[2]["id"]
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={**auth(key), "Last-Event-ID": resume}
    ) as r:
        rest = sse(r.read().decode())
    assert [e["id"] for e in rest] == [e["id"] for e in events[3:]]
    assert_problem(
        client.get(f"/v1/jobs/{job_id}/events", headers={**auth(key), "Last-Event-ID": "nope"}), 400
    )


def test_artifacts_list_and_streamed_download(
    client: Client, key: str, state: State, settings: Settings
) -> None:
    dataset_id = state.create_dataset("acme", "d", "chat", None)["id"]
    job_id = state.jobs.create("acme", decode_spec("build", {"dataset_id": dataset_id}))["id"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth(key)).json() == {"items": []}
    blobs = LocalBlobStore(settings.blob_root)
    report = json.dumps({"ok": True}).encode()
    data = jsonl(*GOOD) * 40  # several chunks are not needed, but more than one line is
    blobs.put(f"acme/jobs/{job_id}/report.json", report)
    blobs.put(f"acme/jobs/{job_id}/train.jsonl", data)
    artifacts = [
        {
            "name": "report.json",
            "key": f"acme/jobs/{job_id}/report.json",
            "size": len(report),
            "sha256": "ab",
        },
        {"name": "train.jsonl", "key": f"acme/jobs/{job_id}/train.jsonl", "size": len(data), "sha256": "cd"},
        {"name": "elsewhere.json", "key": f"globex/jobs/{job_id}/x.json", "size": 1, "sha256": "ef"},
    ]
    state.jobs.start(job_id, "planning")
    state.jobs.succeed(job_id, {"artifacts": artifacts})

    listed = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth(key)).json()["items"]
    assert [(a["name"], a["size"]) for a in listed] == [(a["name"], a["size"]) for a in artifacts]
    r = client.get(f"/v1/jobs/{job_id}/artifacts/report.json", headers=auth(key))
    assert r.status_code == 200
    assert r.content == report
    assert r.headers["content-type"].startswith("application/json")
    assert 'filename="report.json"' in r.headers["content-disposition"]
    with client.stream("GET", f"/v1/jobs/{job_id}/artifacts/train.jsonl", headers=auth(key)) as s:
        assert b"".join(s.iter_bytes()) == data
        assert s.headers["content-length"] == str(len(data))
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/nope.json", headers=auth(key)), 404)
    # an artifact whose key is outside the tenant's space is not served
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/elsewhere.json", headers=auth(key)), 404)


def test_deleting_a_dataset_deletes_the_files_of_builds_whose_records_expired(
    client: Client, key: str, state: State, settings: Settings
) -> None:
    """Job records expire (retention) long before their files may: the delete still finds them."""
    dataset_id = client.post("/v1/datasets", json={"name": "d", "kind": "chat"}, headers=auth(key)).json()[
        "id"
    ]
    job_id = state.jobs.create("acme", decode_spec("build", {"dataset_id": dataset_id}))["id"]
    blobs = LocalBlobStore(settings.blob_root)
    blobs.put(f"acme/jobs/{job_id}/train.jsonl", jsonl(*GOOD))
    state.r.delete(job_key(job_id))  # as its retention ran out
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth(key)).status_code == 204
    assert blobs.list(f"acme/jobs/{job_id}/") == []


# -- synchronous tools ------------------------------------------------------------------------


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


@pytest.mark.parametrize(
    ("example", "options"),
    [
        (GOOD[3], {}),
        (GOOD[3], {"template": "chatml"}),
        (sharegpt_rows()[1], {"model": "gpt-4.1-mini", "line": 2}),
    ],
)
def test_inspect_equals_the_cli(
    client: Client, key: str, tmp_path: Path, example: dict[str, Any], options: dict[str, Any]
) -> None:
    path = tmp_path / "one.jsonl"
    line = options.get("line", 1)
    path.write_bytes(b"\n" * (line - 1) + jsonl(example))
    args = ["inspect", str(path), "--json", "--line", str(line)]
    for name in ("model", "template"):
        if name in options:
            args += [f"--{name}", options[name]]
    expected = run_cli(*args)
    r = client.post("/v1/inspect", json={"example": example, **options}, headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json() == expected


def test_inspect_problems(client: Client, key: str) -> None:
    both = {"example": GOOD[0], "model": "gpt-4o-mini", "template": "chatml"}
    assert_problem(client.post("/v1/inspect", json=both, headers=auth(key)), 422)
    assert_problem(
        client.post("/v1/inspect", json={"example": GOOD[0], "model": "nope"}, headers=auth(key)), 422
    )
    assert_problem(
        client.post("/v1/inspect", json={"example": GOOD[0], "template": "nope"}, headers=auth(key)), 422
    )
    problem = assert_problem(client.post("/v1/inspect", json={"example": [1]}, headers=auth(key)), 422)
    assert problem["errors"][0]["code"] == "not_an_object"


def test_validate_equals_the_cli(client: Client, key: str, tmp_path: Path) -> None:
    bad = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "yo"},
        ]
    }
    body = jsonl(*GOOD[:12], bad, GOOD[0])
    path = tmp_path / "data.jsonl"
    path.write_bytes(body)
    expected = run_cli(
        "validate", str(path), "--json", "--per-example", "--policy", "consecutive_same_role=fix",
        "--policy", "duplicate_example=drop", "--model", "gpt-4o-mini",
    )  # fmt: skip
    query = (
        "?per_example=true&policy=consecutive_same_role=fix&policy=duplicate_example=drop&model=gpt-4o-mini"
    )
    r = client.post(f"/v1/validate{query}", content=body, headers=jsonl_headers(key))
    assert r.status_code == 200, r.text
    assert r.json() == expected
    assert expected["fixes"]
    assert expected["examples_dropped"] == 1

    plain = run_cli("validate", str(path), "--json")
    assert client.post("/v1/validate", content=body, headers=jsonl_headers(key)).json() == plain
    gz = client.post(
        "/v1/validate",
        content=gzip.compress(body),
        headers=jsonl_headers(key, **{"Content-Encoding": "gzip"}),
    )
    assert gz.json() == plain


def test_validate_groups_repeated_problems(client: Client, key: str) -> None:
    """One entry per code and action, with its count and first lines; each finding only with
    per_example (as `tuneset validate --json` prints)."""
    body = jsonl(*GOOD[:30])  # none has a system message
    grouped = client.post("/v1/validate", content=body, headers=jsonl_headers(key)).json()
    [system] = [g for g in grouped["problems"] if g["code"] == "no_system_message"]
    assert (system["count"], system["action"]) == (30, "keep")
    assert system["lines"] == list(range(1, 21))
    assert len(system["samples"]) == 5
    assert grouped["problems_detail"] is None
    detail = client.post("/v1/validate?per_example=true", content=body, headers=jsonl_headers(key)).json()
    lines = [p["line"] for p in detail["problems_detail"] if p["code"] == "no_system_message"]
    assert lines == list(range(1, 31))


def test_validate_problems(client: Client, key: str) -> None:
    body = jsonl(*GOOD[:2])
    assert_problem(client.post("/v1/validate?policy=nope=fix", content=body, headers=jsonl_headers(key)), 422)
    assert_problem(client.post("/v1/validate?model=gpt-nope", content=body, headers=jsonl_headers(key)), 422)
    assert_problem(
        client.post("/v1/validate?format=xml", content=body, headers=jsonl_headers(key)),
        400,
        "unknown-format",
    )
    r = client.post("/v1/validate", content=body, headers={**auth(key), "Content-Type": "text/plain"})
    assert_problem(r, 415)
