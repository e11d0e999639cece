"""Server-Sent Events against a real `tuneset api` process: hundreds of open streams on jobs that
never end leave the other endpoints at their normal latency, streams are capped per tenant (429)
and in all (503), a stream ends when its client leaves or Redis goes away, and resumes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from service.jobs import decode_spec
from service.run import free_port, start_redis, stop
from service.store.state import State

ROOT = Path(__file__).parents[2]
HOST = "127.0.0.1"


class Api(NamedTuple):
    base: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def api_process(redis_url: str, tmp_path: Path, **env: str) -> Iterator[Api]:
    """`tuneset api` on a free port of 127.0.0.1, its output in a log file."""
    port = free_port()
    log = tmp_path / f"api-{port}.log"
    full_env = {
        **os.environ,
        "TUNESET_REDIS_URL": redis_url,
        "TUNESET_DATA_DIR": str(tmp_path / "data"),
        **{f"TUNESET_{k.upper()}": v for k, v in env.items()},
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "api", "--host", HOST, "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{HOST}:{port}"
    try:
        deadline = (
            time.monotonic() + 60
        )  # importing the API (tokenizers, pyarrow, ...) is slow on a busy machine
        while True:
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Api(base, port, log, proc)
    finally:
        stop(proc)


class RawStream:
    """One SSE client on a raw socket (hundreds of them stay light)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int) -> None:
        self.reader, self.writer, self.status = reader, writer, status

    @classmethod
    async def open(cls, port: int, path: str, key: str) -> RawStream:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return cls(reader, writer, int(head.split(b" ", 2)[1]))

    async def read_until(self, needle: bytes, timeout: float) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout
        while needle not in got:
            left = deadline - time.monotonic()
            assert left > 0, got
            got += await asyncio.wait_for(self.reader.read(65536), left)
        return got

    async def read_to_end(self, timeout: float) -> bytes:
        """Everything up to the last chunk of the response (chunked encoding's `0` chunk)."""
        got = await self.read_until(b"0\r\n\r\n", timeout)
        while got != b"0\r\n\r\n" and not got.endswith(b"\r\n0\r\n\r\n"):
            got += await self.read_until(b"0\r\n\r\n", timeout)
        return got

    def vanish(self) -> None:
        """Close abruptly: a TCP reset, no goodbye."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


def open_streams(metrics_text: str) -> float:
    found = re.search(r"^tuneset_sse_streams (\S+)$", metrics_text, re.M)
    assert found, metrics_text
    return float(found.group(1))


async def wait_streams(client: httpx.AsyncClient, expected: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (n := open_streams((await client.get("/metrics")).text)) != expected:
        assert time.monotonic() < deadline, f"{n} streams still open, expected {expected}"
        await asyncio.sleep(0.1)


async def latencies(client: httpx.AsyncClient, key: str, job_id: str, rounds: int) -> dict[str, list[float]]:
    """Seconds each of /readyz, GET /v1/datasets and GET /v1/jobs/{id} took, `rounds` times each."""
    auth = {"Authorization": f"Bearer {key}"}
    paths = {
        "readyz": ("/readyz", {}),
        "datasets": ("/v1/datasets", auth),
        "job": (f"/v1/jobs/{job_id}", auth),
    }
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (path, headers) in paths.items():
            start = time.perf_counter()
            r = await client.get(path, headers=headers)
            out[name].append(time.perf_counter() - start)
            assert r.status_code == 200, (path, r.status_code, r.text)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def report(label: str, measured: dict[str, list[float]]) -> None:
    for name, values in measured.items():
        print(
            f"  {label:<28} {name:<9} p50 {statistics.median(values) * 1000:7.1f} ms"
            f"  p95 {p95(values) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms"
        )


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:tuneset:problem:{slug}"
    assert body["status"] == status
    return body


@pytest.mark.slow
@pytest.mark.timing  # its bound is the API's own latency before the streams: measured on a quiet machine
def test_500_open_streams_and_vanishing_clients_leave_the_api_responsive(
    redis_url: str, tmp_path: Path
) -> None:
    state = State.from_url(redis_url)
    state.r.flushdb()
    tenants = [f"t{i}" for i in range(5)]
    keys = {t: state.create_key(t) for t in tenants}
    jobs = {
        t: [state.jobs.create(t, decode_spec("build", {"dataset_id": "ds_x"}))["id"] for _ in range(4)]
        for t in tenants
    }
    for t in tenants:
        state.create_dataset(t, "support", "chat", None)
    stop_events = threading.Event()

    def emit() -> None:  # the jobs never end, but some of them keep talking
        writer = State.from_url(redis_url)
        n = 0
        while not stop_events.wait(0.02):
            n += 1
            for t in tenants:
                writer.jobs.progress(jobs[t][0], "shards", n, 10**9)

    caps = {"sse_max_streams": "500", "sse_max_streams_per_tenant": "100"}
    with api_process(redis_url, tmp_path, **caps) as api:
        base, port, log = api.base, api.port, api.log
        port = int(base.rsplit(":", 1)[1])

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                key, job = keys["t0"], jobs["t0"][1]
                await latencies(client, key, job, 5)  # warm up
                baseline = await latencies(client, key, job, 40)

                streams = await asyncio.gather(
                    *(
                        RawStream.open(port, f"/v1/jobs/{jobs[t][i % 4]}/events", keys[t])
                        for i in range(100)
                        for t in tenants
                    )
                )
                assert [s.status for s in streams] == [200] * 500
                await wait_streams(client, 500)

                # past the caps: the tenant's (429), the server's (503), each a problem with Retry-After
                auth0 = {"Authorization": f"Bearer {keys['t0']}"}
                r = await client.get(f"/v1/jobs/{jobs['t0'][0]}/events", headers=auth0)
                assert_problem(r, 429, "too-many-streams")
                assert r.headers["retry-after"]
                newcomer_key = state.create_key("t5")
                newcomer_job = state.jobs.create("t5", decode_spec("build", {"dataset_id": "ds_x"}))["id"]
                r = await client.get(
                    f"/v1/jobs/{newcomer_job}/events", headers={"Authorization": f"Bearer {newcomer_key}"}
                )
                assert_problem(r, 503, "streams-unavailable")
                assert r.headers["retry-after"]

                emitter = threading.Thread(target=emit, daemon=True)
                emitter.start()
                try:
                    loaded = await latencies(client, key, job, 40)
                    # the talking jobs' streams got their events meanwhile
                    talking = [s for i, s in enumerate(streams) if (i // 5) % 4 == 0]
                    for s in talking[:10]:
                        await s.read_until(b"event: progress", 5)

                    for s in streams[:150]:
                        s.vanish()
                    for s in streams[150:250]:
                        s.close()
                    await wait_streams(client, 250)
                    after_vanish = await latencies(client, key, job, 40)
                finally:
                    stop_events.set()
                    emitter.join()

                again = await RawStream.open(port, f"/v1/jobs/{jobs['t0'][0]}/events", keys["t0"])
                assert again.status == 200  # the slots of the clients that left are free again
                again.vanish()
                for s in streams[250:]:
                    s.vanish()
                await wait_streams(client, 0)

                print("\nlatency with 0, 500 and 250 open SSE streams (the rest vanished):")
                report("0 streams", baseline)
                report("500 streams, events flowing", loaded)
                report("250 after 250 vanished", after_vanish)
                for name, values in baseline.items():
                    base_p95 = p95(values)
                    for measured in (loaded, after_vanish):
                        assert p95(measured[name]) < 0.5, name
                        assert p95(measured[name]) < 10 * base_p95 + 0.05, name

        asyncio.run(scenario())
        text = log.read_text()
    assert "Traceback" not in text, text
    assert "Exception in ASGI application" not in text, text


@pytest.mark.slow
def test_stream_caps_keep_alive_and_disconnects(redis_url: str, tmp_path: Path) -> None:
    state = State.from_url(redis_url)
    state.r.flushdb()
    keys = {t: state.create_key(t) for t in ("a", "b", "c")}
    jobs = {t: state.jobs.create(t, decode_spec("build", {"dataset_id": "ds_x"}))["id"] for t in keys}
    caps = {"sse_max_streams": "3", "sse_max_streams_per_tenant": "2", "sse_keepalive_s": "0.3"}
    with api_process(redis_url, tmp_path, **caps, shutdown_grace_s="1") as api:
        base, port, log = api.base, api.port, api.log

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:

                async def stream(t: str) -> RawStream:
                    return await RawStream.open(port, f"/v1/jobs/{jobs[t]}/events", keys[t])

                first, second = await stream("a"), await stream("a")
                assert (first.status, second.status) == (200, 200)
                r = await client.get(
                    f"/v1/jobs/{jobs['a']}/events", headers={"Authorization": f"Bearer {keys['a']}"}
                )
                body = assert_problem(r, 429, "too-many-streams")
                assert "2 open event streams" in body["detail"]
                assert int(r.headers["retry-after"]) > 0
                other = await stream("b")
                assert other.status == 200  # another tenant still gets the server's last slot
                r = await client.get(
                    f"/v1/jobs/{jobs['c']}/events", headers={"Authorization": f"Bearer {keys['c']}"}
                )
                assert_problem(r, 503, "streams-unavailable")
                assert int(r.headers["retry-after"]) > 0
                too_big = {"Authorization": f"Bearer {keys['c']}", "Last-Event-ID": f"{2**64}-0"}
                r = await client.get(f"/v1/jobs/{jobs['c']}/events", headers=too_big)
                assert_problem(r, 400, "invalid-event-id")  # checked before a slot is taken
                await wait_streams(client, 3)
                assert (await client.get("/readyz")).status_code == 200

                # an idle stream says it is alive; a job that ends ends its streams
                assert b'data: {"status": "queued"}' in await first.read_until(b": keep-alive", 5)
                cancelled = await client.post(
                    f"/v1/jobs/{jobs['a']}/cancel", headers={"Authorization": f"Bearer {keys['a']}"}
                )
                assert cancelled.status_code == 202
                for s in (first, second):
                    tail = await s.read_to_end(5)
                    assert b'data: {"status": "cancelled"}' in tail
                await wait_streams(client, 1)
                other.vanish()  # and a client that goes away frees its slot
                await wait_streams(client, 0)

            # a stream open when the server is told to stop does not keep it running
            lingering = await stream("b")
            assert lingering.status == 200
            api.proc.send_signal(signal.SIGTERM)
            await lingering.read_to_end(5)  # it ends (the client resumes elsewhere)
            start = time.monotonic()
            while api.proc.poll() is None:
                assert time.monotonic() - start < 6, "the API did not stop with an open stream"
                await asyncio.sleep(0.1)
            lingering.close()

        asyncio.run(scenario())
        text = log.read_text()
    assert "Traceback" not in text, text
    assert "timeout graceful shutdown exceeded" not in text, text  # nothing had to be cancelled


def _sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


@pytest.mark.slow
def test_a_stream_ends_cleanly_when_redis_goes_away_and_resumes_after(tmp_path: Path) -> None:
    redis_port = free_port()
    redis_dir = tmp_path / "redis"
    redis = start_redis(redis_dir, redis_port)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        state = State.from_url(redis_url)
        key = state.create_key("acme")
        job = state.jobs.create("acme", decode_spec("build", {"dataset_id": "ds_x"}))["id"]
        state.jobs.start(job, "planning")
        state.jobs.progress(job, "shards", 1, 3)
        auth = {"Authorization": f"Bearer {key}"}
        with api_process(redis_url, tmp_path) as api:
            url, log = f"{api.base}/v1/jobs/{job}/events", api.log
            seen: list[dict[str, str]] = []
            with httpx.stream("GET", url, headers=auth, timeout=httpx.Timeout(10, read=10)) as r:
                assert r.status_code == 200
                events = _sse_events(r)
                seen += [next(events) for _ in range(3)]  # queued, running, the first progress
                stop(redis)  # SIGTERM: it writes its AOF and exits
                ended_at = time.monotonic()
                seen += list(events)  # the stream ends by itself (a read timeout would raise)
                assert time.monotonic() - ended_at < 5
            assert [e["event"] for e in seen] == ["status", "status", "progress"]
            # while Redis is down, a reconnect is a 503 problem, not a 500
            down = httpx.get(url, headers={**auth, "Last-Event-ID": seen[-1]["id"]}, timeout=10)
            assert_problem(down, 503, "unavailable")

            redis = start_redis(redis_dir, redis_port)
            state = State.from_url(redis_url)
            state.jobs.progress(job, "shards", 3, 3)
            state.jobs.succeed(job, {})
            with httpx.stream("GET", url, headers={**auth, "Last-Event-ID": seen[-1]["id"]}, timeout=10) as r:
                assert r.status_code == 200
                rest = list(_sse_events(r))
            stored = state.jobs.events(job)
            assert [e["id"] for e in seen + rest] == [event_id for event_id, _, _ in stored]
            assert [e["event"] for e in rest] == ["progress", "status"]
            assert rest[-1]["data"] == '{"status": "succeeded"}'
            text = log.read_text()
        assert "Exception in ASGI application" not in text, text
        assert "Traceback" not in text, text
    finally:
        stop(redis)
