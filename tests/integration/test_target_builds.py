"""Builds with several training targets, end to end: the API over real HTTP, a real Celery worker
process, the session's redis-server, and the fake provider on loopback.

- one set of files per target, each listed with its size and SHA-256 and downloaded over HTTP
  byte-identical to what the list says; `openai`'s files are the very bytes a build without
  targets writes;
- the upload sends only the files of the target that uploads (OpenAI's format): the fake
  provider records every file it received, and none is another target's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

from tests.conftest import DATA
from tests.integration.test_fine_tune_flow import (
    Loop,
    api,
    loop,
    loop_settings,
    loop_worker,
)
from tests.targets.cases import ROOT, TOOL_CALLS

__all__ = ["api", "loop", "loop_settings", "loop_worker"]

FIX = {
    "target_role_order": "fix",
    "target_tool_calls_unsupported": "fix",
    "target_weight_unsupported": "fix",
    "target_reserved_string": "fix",
    "target_unsupported_content": "fix",
}


def _rows() -> list[Any]:
    roles = {"human": "user", "gpt": "assistant"}
    share = json.loads((DATA / "sharegpt_fastchat_dummy.json").read_text())[:120]
    chats = [
        {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in c["conversations"]]}
        for c in share
    ]
    irregular = [json.loads(x) for x in (ROOT / "examples" / "chats.jsonl").read_text().splitlines()]
    return [*chats, *irregular, *TOOL_CALLS]


def _build(loop: Loop, ds: str, recipe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    r = loop.http.post(f"/v1/datasets/{ds}/builds", json=recipe)
    assert r.status_code == 202, r.text
    started: dict[str, Any] = r.json()
    job = loop.wait(started["job_id"])
    assert job["status"] == "succeeded", job
    return started, job


def _downloaded(loop: Loop, job_id: str) -> dict[str, tuple[dict[str, Any], bytes]]:
    listed = loop.http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    out = {}
    for a in listed:
        r = loop.http.get(f"/v1/jobs/{job_id}/artifacts/{a['name']}")
        assert r.status_code == 200, (a, r.text)
        assert len(r.content) == a["size"], a
        assert hashlib.sha256(r.content).hexdigest() == a["sha256"], a
        out[a["name"]] = (a, r.content)
    return out


def test_one_set_of_files_per_target_listed_and_downloadable(
    loop: Loop, loop_worker: subprocess.Popen[bytes]
) -> None:
    ds = loop.dataset(_rows())
    base = {"model": "gpt-4o-mini", "policies": FIX, "split": {"validation_fraction": 0.1, "seed": 3}}
    targets = ["openai", "together", "vertex-gemini", "bedrock-nova"]
    _, job = _build(loop, ds, {**base, "outputs": {"targets": targets, "report": {}}})
    files = _downloaded(loop, job["id"])
    expected = {
        "train.jsonl",
        "validation.jsonl",
        "together/train.jsonl",
        "together/validation.jsonl",
        "vertex-gemini/train.jsonl",
        "vertex-gemini/validation.jsonl",
        "bedrock-nova/train.jsonl",
        "bedrock-nova/validation.jsonl",
    }
    assert expected <= set(files), sorted(files)
    assert set(files) - expected == {"report.json", "report.html"}
    summary = job["result"]["targets"]
    assert list(summary) == targets
    for name in targets:
        prefix = "" if name == "openai" else f"{name}/"
        train = files[f"{prefix}train.jsonl"][1].decode().splitlines()
        assert len(train) == summary[name]["examples"] > 100
    first = {
        name: json.loads(files[("" if name == "openai" else f"{name}/") + "train.jsonl"][1].splitlines()[0])
        for name in targets
    }
    assert "messages" in first["openai"]
    assert "messages" in first["together"]
    assert "contents" in first["vertex-gemini"]
    assert first["bedrock-nova"]["schemaVersion"] == "bedrock-conversation-2024"
    assert summary["bedrock-nova"]["problems"]  # the tool calls and role orders it had to fix
    report = json.loads(files["report.json"][1])
    assert any(p["code"] == "target_tool_calls_unsupported" for p in report["problems"])

    # openai's files are the bytes a build without targets writes
    _, plain = _build(loop, ds, base)
    plain_files = _downloaded(loop, plain["id"])
    for name in ("train.jsonl", "validation.jsonl"):
        assert plain_files[name][0]["sha256"] == files[name][0]["sha256"]


def test_upload_sends_only_the_openai_format_files(loop: Loop, loop_worker: subprocess.Popen[bytes]) -> None:
    loop.provider()
    ds = loop.dataset(_rows())
    targets = ["together", "fireworks", "vertex-gemini", "bedrock-nova", "openai"]
    recipe = {
        "model": "gpt-4o-mini",
        "policies": FIX,
        "split": {"validation_fraction": 0.1, "seed": 3},
        "outputs": {"targets": targets},
        "upload": {"provider": "fake"},
    }
    started, build = _build(loop, ds, recipe)
    upload = loop.wait(started["upload_job_id"])
    assert upload["status"] == "succeeded", upload
    by_name = {a["name"]: a for a in build["result"]["artifacts"]}
    assert {f"{t}/train.jsonl" for t in targets if t != "openai"} <= set(by_name)
    received = [f for f in loop.fake.state()["files"] if f["filename"].startswith(f"tuneset-{build['id']}-")]
    assert sorted(f["filename"].rsplit("-", 1)[1] for f in received) == ["train.jsonl", "validation.jsonl"]
    assert {f["sha256"] for f in received} == {
        by_name["train.jsonl"]["sha256"],
        by_name["validation.jsonl"]["sha256"],
    }
    # fireworks' lines can be byte for byte OpenAI's (the same format): only the differing ones tell
    openai = {by_name["train.jsonl"]["sha256"], by_name["validation.jsonl"]["sha256"]}
    others = {a["sha256"] for n, a in by_name.items() if "/" in n} - openai
    assert len(others) >= 6  # together, vertex-gemini and bedrock-nova differ on both sides
    assert not others & {f["sha256"] for f in loop.fake.state()["files"]}
    assert upload["result"]["files"].keys() == {"train", "validation"}


def test_what_a_target_cannot_take_fails_the_build_naming_line_and_rule(
    loop: Loop, loop_worker: subprocess.Popen[bytes]
) -> None:
    ds = loop.dataset(_rows())
    r = loop.http.post(
        f"/v1/datasets/{ds}/builds", json={"model": "gpt-4o-mini", "outputs": {"targets": ["bedrock-nova"]}}
    )
    assert r.status_code == 202, r.text
    job = loop.wait(r.json()["job_id"])
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "validation_failed"
    assert "target_tool_calls_unsupported" in job["error"]["message"]
    files = _downloaded(loop, job["id"])
    assert set(files) == {"report.json"}  # a failed build keeps only its report
    report = json.loads(files["report.json"][1])
    tools = next(p for p in report["problems"] if p["code"] == "target_tool_calls_unsupported")
    n = len(_rows())
    assert tools["lines"] == [n - 1, n]  # the two tool-call conversations, the last lines pushed
    assert "bedrock-nova cannot express tool definitions or calls" in tools["message"]
    assert job["result"]["targets"]["bedrock-nova"]["failed"] >= 2
