"""The whole loop through HTTP: push real conversations, build in a real worker, follow it, download."""

from __future__ import annotations

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
