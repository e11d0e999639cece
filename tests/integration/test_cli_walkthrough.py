"""A new user's path with the CLI only, against a real `tuneset dev`: push the 500 ShareGPT
conversations in batches (interrupted once, then run again: nothing stored twice), build with
`--watch`, fetch every artifact (SHA-256 checked), print the UI URL; then the admin's key commands.
The async client runs against the same service at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.run import free_port
from tests.integration.test_dev_command import Dev
from tuneset.client import AsyncClient

DATA = Path(__file__).parents[2] / "tests" / "data" / "sharegpt_fastchat_dummy.json"
BATCH = 50  # 500 conversations -> 10 batches


def _env(url: str, key: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESET_") and k != "REDIS_URL"}
    return {**env, "TUNESET_URL": url, "TUNESET_API_KEY": key, "TUNESET_CONFIG": "/nonexistent", **extra}


def tuneset(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        check=False,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _interrupted_push(env: dict[str, str], cwd: Path) -> str:
    """A push killed (SIGKILL, no clean-up) once its second batch is stored; what it printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "push",
            str(DATA),
            "-d",
            "support",
            "--create",
            "--batch-size",
            str(BATCH),
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    printed = ""
    deadline = time.monotonic() + 120
    while "batch 2:" not in printed:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, printed
        assert time.monotonic() < deadline, printed
        printed += line
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    return printed


def test_a_new_users_path_with_the_cli_only(tmp_path: Path) -> None:
    with Dev(tmp_path, free_port()) as dev:
        printed = dev.read_until("Ctrl-C stops")
        key = re.search(r"API key \(tenant dev\): (\S+)", printed)
        redis_url = re.search(r"REDIS_URL=(\S+)", printed)
        assert key
        assert redis_url
        env = _env(dev.url, key.group(1))
        auth = {"Authorization": f"Bearer {key.group(1)}"}

        first = _interrupted_push(env, tmp_path)
        assert "created dataset support" in first
        again = tuneset(env, "push", str(DATA), "-d", "support", "--batch-size", str(BATCH), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        summary = re.search(r"in 10 batches: (\d+) new, (\d+) already stored", again.stdout)
        assert summary, again.stdout
        assert int(summary.group(2)) >= 2  # the batches the killed run stored were replayed
        assert int(summary.group(1)) + int(summary.group(2)) == 10
        assert "the dataset has 500 examples in 10 batches" in again.stdout
        datasets = httpx.get(f"{dev.url}/v1/datasets", headers=auth).json()["items"]
        assert [(d["name"], d["examples"], d["batches"]) for d in datasets] == [("support", 500, 10)]

        built = tuneset(env, "build", "support", "--model", "gpt-4o-mini", "--watch", cwd=tmp_path)
        assert built.returncode == 0, built.stdout + built.stderr
        job_id = re.search(r"build (job_\w+) of support", built.stdout)
        assert job_id, built.stdout
        job = job_id.group(1)
        assert f"tuneset build {job}  OK" in built.stdout  # the report's summary
        assert re.search(r"examples out\s+500", built.stdout)
        assert "succeeded: 3 artifacts" in built.stdout

        listed = tuneset(env, "jobs", "--status", "succeeded", cwd=tmp_path)
        assert re.search(rf"{job}\s+build\s+succeeded", listed.stdout), listed.stdout

        fetched = tuneset(env, "get", job, "-o", str(tmp_path / "out"), cwd=tmp_path)
        assert fetched.returncode == 0, fetched.stderr
        artifacts = httpx.get(f"{dev.url}/v1/jobs/{job}/artifacts", headers=auth).json()["items"]
        assert {a["name"] for a in artifacts} == {"report.json", "report.html", "train.jsonl"}
        for a in artifacts:
            data = (tmp_path / "out" / a["name"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (a["size"], a["sha256"])
        assert fetched.stdout.count("sha256 ok") == 3
        assert len((tmp_path / "out" / "train.jsonl").read_text().splitlines()) == 500

        opened = tuneset(env, "open", job, cwd=tmp_path)
        assert opened.stdout.strip() == f"{dev.url}/ui/jobs/{job}"
        page = httpx.get(
            opened.stdout.strip(), headers=auth
        )  # the page itself (a browser signs in: tests/ui)
        assert page.status_code == 200, page.text
        assert job in page.text
        assert all(f">{a['name']}</a>" in page.text for a in artifacts)

        failing = tuneset(env, "build", "support", "-p", "no_system_message=fail", "--watch")
        assert failing.returncode == 1, failing.stdout
        assert "ERRORS" in failing.stdout
        assert "failed: validation_failed" in failing.stdout

        # keys: the dev key is an admin key; another tenant's key is not, and is refused once revoked
        made = tuneset(_env(dev.url, "", REDIS_URL=redis_url.group(1)), "keys", "create", "--tenant", "acme")
        acme = made.stdout.strip()
        assert acme.startswith("ts_"), made.stderr
        keys = tuneset(env, "keys", "list", "--tenant", "acme")
        row = re.search(rf"(key_\w+)\s+acme\s+…{re.escape(acme[-4:])}", keys.stdout)
        assert row, keys.stdout
        acme_auth = {"Authorization": f"Bearer {acme}"}
        assert httpx.get(f"{dev.url}/v1/keys", headers=acme_auth).status_code == 403  # not an admin
        assert httpx.get(f"{dev.url}/v1/jobs", headers=acme_auth).status_code == 200
        revoked = tuneset(env, "keys", "revoke", row.group(1))
        assert revoked.returncode == 0, revoked.stderr
        assert httpx.get(f"{dev.url}/v1/jobs", headers=acme_auth).status_code == 401

        asyncio.run(_async_client(dev.url, key.group(1), job, tmp_path / "async"))


async def _async_client(url: str, key: str, job: str, out: Path) -> None:
    async with AsyncClient(url, key) as ts:
        page = await ts.list_jobs(status="succeeded")
        assert job in [j.id for j in page.items]
        assert (await ts.wait(job)).status == "succeeded"
        events = [e async for e in ts.events(job)]
        assert events[-1].terminal
        assert any(e.type == "progress" for e in events)
        report = next(a for a in await ts.artifacts(job) if a.name == "report.json")
        path = await ts.download(job, report, out)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == report.sha256
