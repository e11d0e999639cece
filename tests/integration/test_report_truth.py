"""The build report over HTTP tells the truth about tokens: the fixes' effect is measured on the
same examples, the validation split is reported on its own, and the job, dataset, recipe and date
are named. Every figure is checked against an independent count: `tuneset validate` on the
pushed file (with and without the fixes) and on the downloaded train and validation files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from service.api.app import create_app
from service.cli import main as cli
from service.settings import Settings
from service.store.state import State
from tests.conftest import jsonl, mtbench_conversations, sharegpt_conversations
from tests.integration.test_http_flow import _auth

POLICIES = {"unnormalized_text": "fix", "consecutive_same_role": "fix"}


def _examples() -> list[dict[str, Any]]:
    """Real conversations; some get trailing whitespace in a reply, some a reply cut in two
    (consecutive assistant turns): both are fixes that change trained tokens."""
    convos = sharegpt_conversations() + mtbench_conversations()
    out = []
    for i, convo in enumerate(convos):
        messages = [dict(m) for m in convo.get("messages") or []]
        replies = [m for m in messages if m.get("role") == "assistant" and len(m.get("content") or "") > 20]
        if messages and replies and i % 4 == 0:
            replies[-1]["content"] += "   \n"
        if messages and replies and i % 7 == 0:
            first = replies[0]
            text = first["content"]
            cut = text.index(" ", len(text) // 2) if " " in text[len(text) // 2 :] else len(text) // 2
            first["content"] = text[:cut]
            messages.insert(messages.index(first) + 1, {"role": "assistant", "content": text[cut:]})
        out.append({**convo, "messages": messages} if messages else convo)
    return out


def _validate(path: Path, *options: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli, ["validate", str(path), "--json", "--model", "gpt-4o-mini", *options], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def _policies(action: str) -> list[str]:
    return [arg for code in POLICIES for arg in ("--policy", f"{code}={action}")]


@pytest.mark.slow
def test_the_report_attributes_tokens_to_fixes_and_to_the_split(
    settings: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    body = jsonl(*_examples())
    source = tmp_path / "pushed.jsonl"
    source.write_bytes(body)
    key = State.from_url(settings.redis_url).create_key("alice")
    with TestClient(create_app(settings)) as client:
        ds = client.post("/v1/datasets", json={"name": "truth", "kind": "chat"}, headers=_auth(key)).json()[
            "id"
        ]
        pushed = client.post(
            f"/v1/datasets/{ds}/batches",
            content=body,
            headers={**_auth(key), "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201, pushed.text
        split = {"validation_fraction": 0.2, "seed": 5}
        recipe = {"model": "gpt-4o-mini", "policies": POLICIES}
        started = client.post(
            f"/v1/datasets/{ds}/builds",
            json={**recipe, "split": split, "shard_size": 150},
            headers=_auth(key),
        )
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=_auth(key)) as stream:
            "".join(stream.iter_text())  # ends when the job does
        job = client.get(f"/v1/jobs/{job_id}", headers=_auth(key)).json()
        assert job["status"] == "succeeded", job

        def download(name: str) -> bytes:
            r = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=_auth(key))
            assert r.status_code == 200, (name, r.text)
            return r.content

        report = json.loads(download("report.json"))
        page = download("report.html").decode()
        train, validation = download("train.jsonl"), download("validation.jsonl")

    # independently: the pushed file without and with the fixes, example by example
    keep = _validate(source, "--per-example", *_policies("keep"))
    fixed = _validate(source, "--per-example", *_policies("fix"))
    changed = {c["line"] for c in fixed["changes"]}
    assert len(changed) > 100
    trained_of = {
        name: {d["line"]: d["trained_tokens"] for d in r["examples_detail"]}
        for name, r in (("keep", keep), ("fix", fixed))
    }
    before = sum(trained_of["keep"][line] for line in changed)
    after = sum(trained_of["fix"][line] for line in changed)
    assert after != before
    assert after - before == fixed["tokens"]["trained_total"] - keep["tokens"]["trained_total"]
    assert report["fix_effect"] == {
        "examples": len(changed),
        "trained_before": before,
        "trained_after": after,
    }
    assert f"trained tokens {before:,} → {after:,} ({after - before:+,})" in page

    # the split: each side's counts are those of its downloaded file
    (tmp_path / "train.jsonl").write_bytes(train)
    (tmp_path / "validation.jsonl").write_bytes(validation)
    sides = {name: _validate(tmp_path / f"{name}.jsonl") for name in ("train", "validation")}
    files = {"train": train, "validation": validation}
    assert report["split"]["validation_fraction"] == 0.2
    assert report["split"]["seed"] == 5
    for name, counted in sides.items():
        side = report["split"][name]
        assert side["examples"] == len(files[name].splitlines()) == counted["examples"] > 0
        assert side["billed_total"] == counted["tokens"]["billed_total"]
        assert side["trained_total"] == counted["tokens"]["trained_total"]
        cells = [f"{side[k]:,}" for k in ("examples", "billed_total", "trained_total")]
        assert re.search(
            rf"<code>{name}\.jsonl</code></th>" + "".join(rf'<td class="n">{c}</td>' for c in cells), page
        ), name
    # the fixes' tokens and the split's add up: train + validation is what the fixes made
    assert (
        sides["train"]["tokens"]["trained_total"] + sides["validation"]["tokens"]["trained_total"]
        == (fixed["tokens"]["trained_total"])
    )
    assert report["examples_out"] == report["split"]["train"]["examples"]
    assert report["tokens"]["trained_total"] == report["split"]["train"]["trained_total"]

    # what was built, from what, how and when: the job's creation time as the API writes it
    created = job["created_at"]
    build = report["build"]
    assert (build["job_id"], build["dataset_id"], build["created_at"]) == (job_id, ds, created)
    assert build["recipe"]["model"] == "gpt-4o-mini"
    assert build["recipe"]["policies"] == POLICIES
    for named in (job_id, ds, created, "consecutive_same_role=fix, unnormalized_text=fix"):
        assert named in page, named
