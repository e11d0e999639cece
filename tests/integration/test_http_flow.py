"""The whole loop through HTTP: push real conversations, build in a real worker, follow it, download."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

from litestar.testing import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.state import State
from tests.conftest import DATA, jsonl, mtbench_conversations


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append(
            {"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])}
        )
    return events


def test_push_build_follow_download(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    state = State.from_url(settings.redis_url)
    alice, bob = state.create_key("alice"), state.create_key("bob")
    sharegpt = json.loads((DATA / "sharegpt_fastchat_dummy.json").read_text())
    with TestClient(create_app(settings)) as client:
        ds = client.post("/v1/datasets", json={"name": "sales", "kind": "chat"}, headers=_auth(alice)).json()[
            "id"
        ]
        headers = {**_auth(alice), "Content-Type": "application/jsonl"}
        first = client.post(f"/v1/datasets/{ds}/batches", content=jsonl(*sharegpt), headers=headers)
        second = client.post(
            f"/v1/datasets/{ds}/batches", content=jsonl(*mtbench_conversations()), headers=headers
        )
        assert (first.status_code, second.status_code) == (201, 201)
        assert client.get(f"/v1/datasets/{ds}", headers=_auth(alice)).json()["examples"] == 530

        started = client.post(
            f"/v1/datasets/{ds}/builds", json={"model": "gpt-4o-mini"}, headers=_auth(alice)
        )
        assert started.status_code == 202
        job_id = started.json()["job_id"]

        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=_auth(alice)) as stream:
            events = _sse("".join(stream.iter_text()))  # the stream ends when the job is terminal
        statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
        assert statuses == ["queued", "running", "succeeded"]
        progress = [e["data"] for e in events if e["event"] == "progress"]
        assert progress[-1]["done"] == progress[-1]["total"] == 530

        # resuming after the second event gives exactly the rest
        with client.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={**_auth(alice), "Last-Event-ID": events[1]["id"]}
        ) as stream:
            assert [e["id"] for e in _sse("".join(stream.iter_text()))] == [e["id"] for e in events[2:]]

        job = client.get(f"/v1/jobs/{job_id}", headers=_auth(alice)).json()
        assert job["status"] == "succeeded"
        assert job["progress"] == {"done": 530, "total": 530}
        names = [
            a["name"]
            for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=_auth(alice)).json()["items"]
        ]
        assert names == ["report.json", "report.html", "train.jsonl"]
        report = client.get(f"/v1/jobs/{job_id}/artifacts/report.json", headers=_auth(alice)).json()
        train = client.get(f"/v1/jobs/{job_id}/artifacts/train.jsonl", headers=_auth(alice)).content
        assert report["examples"] == 530
        assert len(train.splitlines()) == report["examples_out"]
        assert json.loads(train.splitlines()[0])["messages"][0]["role"] == "user"

        # another tenant sees none of it
        for path in (
            f"/v1/datasets/{ds}",
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/events",
            f"/v1/jobs/{job_id}/artifacts",
            f"/v1/jobs/{job_id}/artifacts/report.json",
        ):
            assert client.get(path, headers=_auth(bob)).status_code == 404, path
        assert client.post(f"/v1/datasets/{ds}/builds", json={}, headers=_auth(bob)).status_code == 404
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=_auth(bob)).status_code == 404


def _wait_terminal(client: TestClient[Any], job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        "".join(stream.iter_text())  # the stream ends when the job is terminal
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    return job


def test_every_listed_artifact_downloads_and_deleting_the_dataset_deletes_them(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    """Every output kind (JSONL in parts, validation, packed Parquet + manifest in a folder, report
    page) downloads byte for byte as listed; once the dataset is deleted none of it is served."""
    state = State.from_url(settings.redis_url)
    key = state.create_key("alice")
    auth = _auth(key)
    with TestClient(create_app(settings)) as client:
        ds = client.post("/v1/datasets", json={"name": "all", "kind": "chat"}, headers=auth).json()["id"]
        pushed = client.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*mtbench_conversations()) * 4,
            headers={**auth, "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201
        recipe = {
            "split": {"validation_count": 10, "seed": 7},
            "outputs": {
                "openai_jsonl": {"max_file_bytes": 64 * 1024},
                "packed": {"seq_len": 2048, "template": "chatml", "rows_per_shard": 20},
                "report": {},
            },
        }
        job_id = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth).json()["job_id"]
        assert _wait_terminal(client, job_id, auth)["status"] == "succeeded"
        listed = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()["items"]
        names = [a["name"] for a in listed]
        assert {"report.json", "report.html", "validation.jsonl", "packed/manifest.json"} <= set(names)
        assert any(n.startswith("train-00000-of-") for n in names), names
        assert any(n.startswith("packed/packed-") and n.endswith(".parquet") for n in names), names
        for artifact in listed:
            for path in (artifact["name"], artifact["name"].replace("/", "%2F")):
                r = client.get(f"/v1/jobs/{job_id}/artifacts/{path}", headers=auth)
                assert r.status_code == 200, (path, r.text)
                assert hashlib.sha256(r.content).hexdigest() == artifact["sha256"], path
                assert len(r.content) == artifact["size"]
        manifest = client.get(f"/v1/jobs/{job_id}/artifacts/packed/manifest.json", headers=auth)
        assert manifest.headers["content-type"].startswith("application/json")
        assert 'filename="manifest.json"' in manifest.headers["content-disposition"]

        assert client.delete(f"/v1/datasets/{ds}", headers=auth).status_code == 204
        for artifact in listed:
            r = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}", headers=auth)
            assert r.status_code == 404, artifact["name"]
        assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json() == {"items": []}
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        assert job["status"] == "succeeded"
        assert job["result"]["dataset_deleted"] is True
        assert job["result"]["artifacts"] == []
    assert not list((settings.blob_root / "alice" / "jobs" / job_id).rglob("*.*"))  # the bytes are gone too


def test_deleting_a_dataset_cancels_its_queued_build(settings: Settings) -> None:
    """No worker runs here, so the build stays queued; the delete cancels it."""
    state = State.from_url(settings.redis_url)
    auth = _auth(state.create_key("alice"))
    with TestClient(create_app(settings)) as client:
        ds = client.post("/v1/datasets", json={"name": "q", "kind": "chat"}, headers=auth).json()["id"]
        client.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*mtbench_conversations()),
            headers={**auth, "Content-Type": "application/jsonl"},
        )
        job_id = client.post(f"/v1/datasets/{ds}/builds", json={}, headers=auth).json()["job_id"]
        assert client.delete(f"/v1/datasets/{ds}", headers=auth).status_code == 204
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "cancelled"
