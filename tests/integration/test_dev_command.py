"""`tuneset dev` runs everything with no set-up, serves the API, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.run import free_port
from service.store.state import State


def _workers_using(redis_url: str) -> list[int]:
    """Celery worker processes whose environment points at `redis_url` (read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                b"celery" in (proc / "cmdline").read_bytes()
                and redis_url.encode() in (proc / "environ").read_bytes()
            ):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_dev_runs_redis_a_worker_and_the_api(tmp_path: Path, stop_signal: signal.Signals) -> None:
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "TUNESET_REDIS_URL", "TUNESET_DATA_DIR"}
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed = ""
        deadline = time.monotonic() + 30
        while "REDIS_URL=" not in printed:
            assert time.monotonic() < deadline, printed
            printed += proc.stdout.readline()
        key = re.search(r"API key \(tenant dev\): (\S+)", printed)
        redis_url = re.search(r"REDIS_URL=(\S+)", printed)
        assert key
        assert redis_url
        assert f"http://127.0.0.1:{port}" in printed
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/livez").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)
        created = httpx.post(
            f"{base}/v1/datasets",
            json={"name": "demo", "kind": "chat"},
            headers={"Authorization": f"Bearer {key.group(1)}"},
        )
        assert created.status_code == 201
        assert (tmp_path / ".tuneset" / "redis").is_dir()  # its data lives under the working directory
        assert _workers_using(redis_url.group(1))
    finally:
        proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"tuneset dev did not stop on {stop_signal.name}")
    assert not State.from_url(redis_url.group(1)).ping()  # its redis-server stopped too
    assert _workers_using(redis_url.group(1)) == []  # and its worker


def test_keys_create_prints_a_key_once_and_stores_only_its_hash(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("TUNESET_REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "acme"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.startswith("ts_")
    state = State.from_url(redis_url)
    assert state.tenant_for(out) == "acme"
    stored: dict[str, str] = state.r.hgetall("tuneset:keys")  # type: ignore[assignment]
    assert out not in stored
    assert out not in stored.values()
