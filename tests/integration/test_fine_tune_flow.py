"""The loop to a provider: push → build → upload → fine-tune → succeeded, and every ending heard.

Real parts: the session's redis-server, a real Celery worker process, the API served over HTTP by
uvicorn (the fake provider posts its signed webhooks to it), the fake provider
(`service.providers.fake`) on loopback, and a caller's receiver that checks each webhook with the
`standardwebhooks` verifier.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from standardwebhooks import Webhook

from service.api.app import create_app
from service.providers.fake import FakeProvider, run_fake_provider
from service.run import stop
from service.settings import Settings
from service.store.secrets import new_key
from service.store.state import TERMINAL, State
from service.webhooks.signing import new_secret
from tests.conftest import DATA, jsonl
from tests.integration.conftest import settings_env
from tests.integration.test_worker_faults import _start_worker

PROVIDER_HOOK_SECRET = new_secret()


class Receiver:
    """The caller's webhook endpoint: records every request; answers 503 while `down` > 0."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.down = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = receiver.down > 0
                    receiver.down -= 1  # below zero: how many were answered since it came back
                self.send_response(503 if failing else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """The payloads whose signature checks out with `secret` (others are not for it)."""
        out = []
        for headers, body in list(self.requests):
            try:
                out.append({"id": headers["webhook-id"], **Webhook(secret).verify(body, headers)})
            except Exception:
                continue
        return out


class Loop:
    def __init__(self, settings: Settings, api: str, fake: FakeProvider, receiver: Receiver) -> None:
        self.settings, self.api, self.fake, self.receiver = settings, api, fake, receiver
        self.state = State.from_url(settings.redis_url)
        self.key = self.state.create_key("acme")
        self.http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def provider(self) -> dict[str, Any]:
        body = {
            "name": "fake",
            "base_url": self.fake.base_url,
            "api_key": "sk-fake-0123456789",
            "webhook_secret": PROVIDER_HOOK_SECRET,
        }
        r = self.http.post("/v1/providers", json=body)
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        self.fake.configure(
            webhook_url=self.api + created["webhook_url"], webhook_secret=PROVIDER_HOOK_SECRET
        )
        return created

    def dataset(self, rows: list[Any]) -> str:
        ds: str = self.http.post("/v1/datasets", json={"name": "support", "kind": "chat"}).json()["id"]
        r = self.http.post(
            f"/v1/datasets/{ds}/batches", content=jsonl(*rows), headers={"Content-Type": "application/jsonl"}
        )
        assert r.status_code == 201, r.text
        return ds

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        return loop_env(self.settings)


def loop_env(settings: Settings) -> dict[str, str]:
    assert settings.secret_key is not None
    return {
        **settings_env(settings),
        "TUNESET_SECRET_KEY": settings.secret_key.get_secret_value(),
        "TUNESET_WEBHOOK_ALLOW_HOSTS": json.dumps(settings.webhook_allow_hosts),
        "TUNESET_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(settings.webhook_retry_schedule_s),
        "TUNESET_PROVIDER_POLL_INTERVAL_S": str(settings.provider_poll_interval_s),
    }


@pytest.fixture
def loop_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "secret_key": SecretStr(new_key()),
            "webhook_allow_hosts": ["127.0.0.1"],
            "webhook_retry_schedule_s": [0.5, 0.5, 1.0, 1.0, 2.0],
            "provider_poll_interval_s": 0.5,
        }
    )


@pytest.fixture
def api(loop_settings: Settings) -> Iterator[str]:
    """The API over real HTTP on a free loopback port (the fake provider posts webhooks to it)."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(loop_settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def loop(loop_settings: Settings, api: str) -> Iterator[Loop]:
    with run_fake_provider(step_seconds=0.2) as fake:
        yield Loop(loop_settings, api, fake, Receiver())


@pytest.fixture
def loop_worker(loop: Loop) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start_worker(loop.settings, loop.settings.data_dir / "worker.log", env=loop.env())
    yield proc
    stop(proc)


def _sharegpt() -> list[Any]:
    rows: list[Any] = json.loads((DATA / "sharegpt_fastchat_dummy.json").read_text())
    return rows


def _ours(files: list[dict[str, Any]], build_job: str) -> list[dict[str, Any]]:
    return [f for f in files if f["filename"].startswith(f"tuneset-{build_job}-")]


def test_push_build_upload_fine_tune_and_hear_every_ending(loop: Loop, loop_worker: object) -> None:
    provider = loop.provider()
    sub = loop.http.post("/v1/webhooks/subscriptions", json={"url": loop.receiver.url}).json()
    ds = loop.dataset(_sharegpt()[:200])
    recipe = {
        "model": "gpt-4o-mini",
        "split": {"validation_fraction": 0.1, "seed": 1},
        "upload": {"provider": "fake"},
        "fine_tune": {"suffix": "support", "seed": 7, "hyperparameters": {"n_epochs": 2}},
        "callback_url": loop.receiver.url,
    }
    r = loop.http.post(f"/v1/datasets/{ds}/builds", json=recipe)
    assert r.status_code == 202, r.text
    started = r.json()

    fine_tune = loop.wait(started["fine_tune_job_id"])
    assert fine_tune["status"] == "succeeded", fine_tune
    build, upload = loop.wait(started["job_id"]), loop.wait(started["upload_job_id"])
    assert (build["status"], upload["status"]) == ("succeeded", "succeeded")

    # the provider holds exactly one file per side, and trained on them
    files = _ours(loop.fake.state()["files"], started["job_id"])
    assert sorted(f["filename"].rsplit("-", 1)[1] for f in files) == ["train.jsonl", "validation.jsonl"]
    assert all(f["status"] == "processed" for f in files)
    assert upload["result"]["files"] == {f["filename"].rsplit("-", 1)[1][:-6]: f["id"] for f in files}
    result = fine_tune["result"]
    assert result["provider_status"] == "succeeded"
    assert result["fine_tuned_model"].startswith("ft:gpt-4o-mini")
    assert "support" in result["fine_tuned_model"]
    assert result["trained_tokens"] > 0
    assert result["events"]
    assert result["checkpoints"]
    provider_jobs = [
        j for j in loop.fake.state()["jobs"] if j["metadata"].get("tuneset_job") == fine_tune["id"]
    ]
    assert len(provider_jobs) == 1
    assert provider_jobs[0]["training_file"] == upload["result"]["files"]["train"]
    assert provider_jobs[0]["seed"] == 7

    # every ending reached the subscription and the job callback, each signed with its own secret
    expected = {"build.succeeded", "upload.succeeded", "fine_tune.succeeded"}
    deadline = time.monotonic() + 30
    while True:
        by_sub = loop.receiver.verified(sub["secret"])
        by_callback = loop.receiver.verified(started["callback_secret"])
        if {p["type"] for p in by_sub} >= expected and {p["type"] for p in by_callback} >= expected:
            break
        assert time.monotonic() < deadline, (by_sub, by_callback)
        time.sleep(0.2)
    assert len(by_sub) == len(by_callback) == 3  # once each: nothing announced twice
    done = next(p for p in by_callback if p["type"] == "fine_tune.succeeded")
    assert done["job_id"] == fine_tune["id"]
    assert done["result"]["fine_tuned_model"] == result["fine_tuned_model"]
    deliveries = loop.http.get("/v1/webhooks/deliveries").json()["items"]
    assert len(deliveries) == 6
    assert all(d["status"] == "delivered" and d["attempts"][-1]["status_code"] == 204 for d in deliveries)

    # the provider's own signed webhook reached us (it asked for a poll), and a forged one does not
    deadline = time.monotonic() + 10
    while (hooks := loop.fake.state()["webhooks"]) and hooks[0]["status"] == "pending":
        assert time.monotonic() < deadline, hooks
        time.sleep(0.1)
    assert [(h["type"], h["status"], h["last_status"]) for h in hooks] == [
        ("fine_tuning.job.succeeded", "delivered", 200)
    ]
    event = (
        b'{"id":"evt_x","object":"event","type":"fine_tuning.job.succeeded","created_at":1,"data":{"id":"x"}}'
    )
    headers = {
        "webhook-id": "evt_x",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,AAAA",
    }
    forged = httpx.post(loop.api + provider["webhook_url"], content=event, headers=headers)
    assert forged.status_code == 400, forged.text


def test_provider_429s_and_500s_still_upload_once(loop: Loop, loop_worker: object) -> None:
    loop.provider()
    loop.fake.add_fault("POST /v1/files", status=429, retry_after=1, times=3)
    loop.fake.add_fault("POST /v1/files", status=500, times=3)
    loop.fake.add_fault(
        "POST /v1/files", status=500, phase="after", times=1
    )  # stored, but the answer is lost
    ds = loop.dataset(_sharegpt()[:60])
    started = loop.http.post(f"/v1/datasets/{ds}/builds", json={"upload": {"provider": "fake"}}).json()
    upload = loop.wait(started["upload_job_id"], timeout=180)
    assert upload["status"] == "succeeded", (upload["error"], upload["result"])
    files = _ours(loop.fake.state()["files"], started["job_id"])
    assert len(files) == 1, files  # retried many times, stored once
    assert upload["result"]["files"] == {"train": files[0]["id"]}
    statuses = [
        r["status"]
        for r in loop.fake.state()["requests"]
        if r["path"] == "/v1/files" and r["method"] == "POST"
    ]
    assert statuses.count(429) == 3


def test_a_file_the_provider_rejects_fails_the_job_with_its_message(loop: Loop, loop_worker: object) -> None:
    loop.provider()
    loop.fake.configure(min_examples=1000)  # stricter than our recipe: the provider says no
    receiver_sub = loop.http.post("/v1/webhooks/subscriptions", json={"url": loop.receiver.url}).json()
    ds = loop.dataset(_sharegpt()[:30])
    recipe = {"upload": {"provider": "fake"}, "fine_tune": {}}
    started = loop.http.post(f"/v1/datasets/{ds}/builds", json=recipe).json()
    upload = loop.wait(started["upload_job_id"])
    assert upload["status"] == "failed"
    assert upload["error"]["code"] == "invalid_n_examples"
    assert "1000" in upload["error"]["message"]
    fine_tune = loop.wait(started["fine_tune_job_id"])
    assert fine_tune["status"] == "failed"
    assert fine_tune["error"]["code"] == "upload_failed"
    deadline = time.monotonic() + 20
    # until both have arrived (`<` stopped as soon as build.succeeded came, which is no subset)
    while not {p["type"] for p in loop.receiver.verified(receiver_sub["secret"])} >= {
        "upload.failed",
        "fine_tune.failed",
    }:
        assert time.monotonic() < deadline, loop.receiver.requests
        time.sleep(0.2)
    failed = next(p for p in loop.receiver.verified(receiver_sub["secret"]) if p["type"] == "upload.failed")
    assert failed["error"]["message"] == upload["error"]["message"]


def test_a_receiver_that_is_down_gets_the_webhook_when_it_is_back(loop: Loop, loop_worker: object) -> None:
    sub = loop.http.post("/v1/webhooks/subscriptions", json={"url": loop.receiver.url}).json()
    loop.receiver.down = 3
    ds = loop.dataset(_sharegpt()[:20])
    started = loop.http.post(f"/v1/datasets/{ds}/builds", json={}).json()
    assert loop.wait(started["job_id"])["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while loop.receiver.down >= 0:  # three 503s, then the fourth attempt is answered 204
        assert time.monotonic() < deadline, loop.receiver.requests
        time.sleep(0.2)
    assert len(loop.receiver.verified(sub["secret"])) == 4
    ids = [h["webhook-id"] for h, _ in loop.receiver.requests]
    assert len(ids) == 4
    assert len(set(ids)) == 1  # the same webhook-id on every attempt
    (delivery,) = loop.http.get("/v1/webhooks/deliveries").json()["items"]
    assert delivery["id"] == ids[0]
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 503, 204]
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])
    # a delivered one is not sent again on request (a failed one would be, with the same id)
    assert loop.http.post(f"/v1/webhooks/deliveries/{delivery['id']}/retry").status_code == 409


def test_a_worker_killed_during_the_upload_leaves_one_file_at_the_provider(
    loop: Loop, tmp_path: Path
) -> None:
    settings = loop.settings.model_copy(update={"build_time_limit_s": 20, "visibility_timeout_s": 25})
    loop.settings = settings
    loop.provider()
    # the provider stores the file, then the response takes 60 s: the worker dies meanwhile
    loop.fake.add_fault("POST /v1/files", delay_s=60, phase="after", times=1)
    first = _start_worker(settings, tmp_path / "w1.log", env=loop.env())
    try:
        ds = loop.dataset(_sharegpt()[:40])
        started = loop.http.post(f"/v1/datasets/{ds}/builds", json={"upload": {"provider": "fake"}}).json()
        deadline = time.monotonic() + 60
        while not _ours(loop.fake.state()["files"], started["job_id"]):
            assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first)
    second = _start_worker(settings, tmp_path / "w2.log", env=loop.env())
    try:
        upload = loop.wait(
            started["upload_job_id"], timeout=240
        )  # kombu hands the task out again after ~100 s
    finally:
        stop(second)
    assert upload["status"] == "succeeded", (upload["error"], upload["result"])
    files = _ours(loop.fake.state()["files"], started["job_id"])
    assert len(files) == 1, files
    assert upload["result"]["files"] == {"train": files[0]["id"]}


def _preference_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for i, convo in enumerate(_sharegpt()[:n]):
        turns = convo["conversations"]
        question = next(t["value"] for t in turns if t["from"] == "human")
        answer = next(t["value"] for t in turns if t["from"] == "gpt")
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": question}]},
                "preferred_output": [{"role": "assistant", "content": answer}],
                "non_preferred_output": [{"role": "assistant", "content": f"I cannot help with that ({i})."}],
            }
        )
    return rows


def test_a_large_file_goes_up_in_parts_and_a_later_dpo_fine_tune_reuses_it(
    loop: Loop, tmp_path: Path
) -> None:
    """Above the single-file limit the Uploads API carries the file in parallel parts; a fine-tune
    asked for afterwards (`POST /v1/jobs/{build}/fine-tune`) trains on the files already there."""
    settings = loop.settings.model_copy(
        update={"provider_single_file_bytes": 8192, "provider_part_bytes": 4096}
    )
    env = {
        **loop_env(settings),
        "TUNESET_PROVIDER_SINGLE_FILE_BYTES": "8192",
        "TUNESET_PROVIDER_PART_BYTES": "4096",
    }
    worker = _start_worker(settings, tmp_path / "w.log", env=env)
    try:
        loop.provider()
        ds: str = loop.http.post("/v1/datasets", json={"name": "prefs", "kind": "preference"}).json()["id"]
        r = loop.http.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*_preference_rows(40)),
            headers={"Content-Type": "application/jsonl"},
        )
        assert r.status_code == 201, r.text
        started = loop.http.post(f"/v1/datasets/{ds}/builds", json={"upload": {"provider": "fake"}}).json()
        upload = loop.wait(started["upload_job_id"])
        assert upload["status"] == "succeeded", upload["error"]
        (upload_record,) = loop.fake.state()["uploads"]
        assert upload_record["status"] == "completed"
        assert upload_record["md5_given"]
        parts = [
            r for r in loop.fake.state()["requests"] if r["path"].endswith("/parts") and r["status"] == 200
        ]
        assert len(parts) == -(-upload_record["bytes"] // 4096)  # every part within the part size

        later = loop.http.post(
            f"/v1/jobs/{started['job_id']}/fine-tune",
            json={"method": "dpo", "hyperparameters": {"beta": 0.2}, "suffix": "prefs"},
        )
        assert later.status_code == 202, later.text
        assert "upload_job_id" not in later.json()  # the files are at the provider already
        fine_tune = loop.wait(later.json()["job_id"])
        assert fine_tune["status"] == "succeeded", fine_tune["error"]
        (job,) = [j for j in loop.fake.state()["jobs"] if j["metadata"].get("tuneset_job") == fine_tune["id"]]
        assert job["method"]["type"] == "dpo"
        assert job["training_file"] == upload["result"]["files"]["train"]
        assert len(_ours(loop.fake.state()["files"], started["job_id"])) == 1  # uploaded once, trained twice
        again = loop.http.post(f"/v1/jobs/{started['job_id']}/fine-tune", json={"method": "dpo"})
        assert again.status_code == 202, again.text  # another run on the same files is allowed
        assert loop.wait(again.json()["job_id"])["status"] == "succeeded"
        assert len(_ours(loop.fake.state()["files"], started["job_id"])) == 1
    finally:
        stop(worker)


def test_cancelling_a_running_fine_tune_cancels_it_at_the_provider(loop: Loop, loop_worker: object) -> None:
    loop.provider()
    loop.fake.configure(step_seconds=30, processing_seconds=0.2)  # the provider job would take minutes
    ds = loop.dataset(_sharegpt()[:30])
    started = loop.http.post(
        f"/v1/datasets/{ds}/builds", json={"upload": {"provider": "fake"}, "fine_tune": {}}
    ).json()
    ft = started["fine_tune_job_id"]
    deadline = time.monotonic() + 60
    while not (loop.http.get(f"/v1/jobs/{ft}").json()["result"] or {}).get("provider_job_id"):
        assert time.monotonic() < deadline, loop.http.get(f"/v1/jobs/{ft}").json()
        time.sleep(0.2)
    assert loop.http.post(f"/v1/jobs/{ft}/cancel").status_code == 202
    job = loop.wait(ft, timeout=30)
    assert job["status"] == "cancelled", job
    (provider_job,) = [j for j in loop.fake.state()["jobs"] if j["metadata"].get("tuneset_job") == ft]
    assert provider_job["status"] == "cancelled"
    assert job["result"]["provider_status"] == "cancelled"
