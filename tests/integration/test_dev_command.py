"""`tuneset dev` runs everything with no set-up, serves the API, and Ctrl-C stops all of it.

Its children are found in /proc (children of the `dev` this test started); a test kills only
processes it saw there, and only while their start time still matches.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from service.run import free_port
from service.store.state import State

ROOT = Path(__file__).parents[2]


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


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from its state field on (index 0 state, 1 ppid, 2 pgrp, 19 start time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _alive(pid: int, started: str) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[19] == started and stat[0] != "Z"


def _children(pid: int) -> dict[int, str]:
    """The live children of `pid`: pid -> start time."""
    found = {}
    for entry in Path("/proc").iterdir():
        if (
            entry.name.isdigit()
            and (stat := _stat(int(entry.name)))
            and int(stat[1]) == pid
            and stat[0] != "Z"
        ):
            found[int(entry.name)] = stat[19]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Dev:
    """A `tuneset dev` this test started, its output read by a thread. On exit it is stopped, and
    any process it was seen to start (children and grandchildren) that still runs is SIGKILLed."""

    def __init__(self, cwd: Path, port: int) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"REDIS_URL", "TUNESET_REDIS_URL", "TUNESET_DATA_DIR"}
        }
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "dev", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        self.seen: dict[int, str] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output += line

    def __enter__(self) -> Dev:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.descendants()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, started in self.seen.items():
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)

    def read_until(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None or self._reader.is_alive(), self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.01)
        return self.output

    def descendants(self) -> dict[int, str]:
        """Its children and theirs (a worker's pool), remembered for the clean-up."""
        found = _children(self.proc.pid)
        for pid in list(found):
            found |= _children(pid)
        self.seen |= found
        return found

    def watch_until_exit(self, timeout: float = 30) -> dict[int, str]:
        """Every child seen until it exits (asserting it does), polled every few milliseconds."""
        seen: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            seen |= self.descendants()
            assert time.monotonic() < deadline, f"still running:\n{self.output}"
            time.sleep(0.005)
        self._reader.join(5)
        return seen

    def stop(self, *signals: signal.Signals, pause: float = 1.0, timeout: float = 30) -> dict[int, str]:
        """Send `signals` `pause` s apart; returns the descendants it had, once it has exited."""
        before = self.descendants()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(pause)
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tuneset dev did not stop on {[s.name for s in signals]}")
        return before


def _redis_servers_in(redis_dir: Path) -> list[int]:
    """redis-server processes working in `redis_dir` (redis changes to its --dir and retitles itself)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and Path(os.readlink(entry / "exe")).name == "redis-server"
                and os.readlink(entry / "cwd") == str(redis_dir.resolve())
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_second_dev_on_the_same_directory_refuses_naming_the_first_and_starts_nothing(
    tmp_path: Path,
) -> None:
    redis_dir = tmp_path / ".tuneset" / "redis"
    aof = redis_dir / "appendonly.aof"
    with Dev(tmp_path, free_port()) as first:
        first.read_until("Ctrl-C")
        before = aof.read_bytes()
        assert len(_redis_servers_in(redis_dir)) == 1
        with Dev(tmp_path, free_port()) as second:
            started = second.watch_until_exit()
            assert second.proc.returncode != 0
            assert f"pid {first.proc.pid}" in second.output
            assert first.url in second.output
            assert started == {}  # not a redis-server, not a worker, not an API
        # no second redis-server appended a second dev key to the first one's append-only file (its
        # mtime alone can move: the first worker's broker writes a mutex there every 10 s)
        after = aof.read_bytes()
        assert after.startswith(before)
        assert b"tuneset:keys" not in after[len(before) :]
        assert len(_redis_servers_in(redis_dir)) == 1
        assert httpx.get(f"{first.url}/livez").status_code == 200  # the first one still serves


@pytest.mark.slow
def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with Dev(tmp_path, port) as dev:
            started = dev.watch_until_exit()
            assert dev.proc.returncode != 0
            assert f"port {port}" in dev.output
            assert "running at" not in dev.output
            assert started == {}
            assert not (tmp_path / ".tuneset" / "redis").exists()


@pytest.mark.slow
def test_running_at_is_printed_once_the_api_answers_and_a_stale_lock_does_not_block(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / ".tuneset").mkdir()
    (tmp_path / ".tuneset" / "dev.lock").write_text(
        json.dumps({"pid": gone.pid, "url": "http://127.0.0.1:1"})
    )
    with Dev(tmp_path, free_port()) as dev:
        dev.read_until("running at")
        try:
            answer = httpx.get(f"{dev.url}/livez", timeout=5)
        except httpx.TransportError as e:
            pytest.fail(f"'running at' was printed before the API listened: {e!r}")
        assert answer.status_code == 200


@pytest.mark.slow
def test_each_child_runs_in_its_own_process_group(tmp_path: Path) -> None:
    with Dev(tmp_path, free_port()) as dev:
        dev.read_until("Ctrl-C")
        children = _children(dev.proc.pid)
        workers = [pid for pid in children if "celery" in _cmdline(pid)]
        assert len(workers) == 1
        for pid in children:
            # a group of its own: `kill -TERM -PID` reaches it (and a worker's pool) and nothing else
            assert os.getpgid(pid) == pid != os.getpgid(dev.proc.pid), _cmdline(pid)
        assert len(children) == 3  # redis-server, the worker, the API


def _wait_for_the_pool(dev: Dev) -> None:
    deadline = time.monotonic() + 60
    while not any(_children(pid) for pid in dev.descendants() if "celery" in _cmdline(pid)):
        assert time.monotonic() < deadline, "the worker started no pool process"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigint_then_sigterm_stops_every_child(tmp_path: Path) -> None:
    with Dev(tmp_path, free_port()) as dev:
        dev.read_until("Ctrl-C")
        _wait_for_the_pool(dev)
        had = dev.stop(signal.SIGINT, signal.SIGTERM, pause=1.0)
        assert len(had) >= 3  # redis-server, the worker and its pool process (and the API)
        left = [_cmdline(pid) for pid, started in had.items() if _alive(pid, started)]
        assert left == []


@pytest.mark.slow
def test_a_hung_api_does_not_keep_the_other_children_running(tmp_path: Path) -> None:
    with Dev(tmp_path, free_port()) as dev:
        dev.read_until("Ctrl-C")
        _wait_for_the_pool(dev)
        api = [pid for pid in _children(dev.proc.pid) if " api " in _cmdline(pid)]
        assert len(api) == 1, "no API process to hang"
        os.kill(api[0], signal.SIGSTOP)
        had = dev.stop(signal.SIGINT)
        left = [_cmdline(pid) for pid, started in had.items() if _alive(pid, started)]
        assert left == []


def test_make_dev_passes_port_through() -> None:
    planned = subprocess.run(
        ["make", "-n", "dev", "PORT=8100"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "tuneset dev --port 8100" in planned
