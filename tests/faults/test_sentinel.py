"""Redis behind Sentinel: with `TUNESET_REDIS_URL=sentinel://…?master_name=…` the API, its event
streams and a real worker find the master through a real Sentinel, and after a failover (the
replica promoted by `SENTINEL FAILOVER`) the same processes, never restarted, run the next build
on the new master. Each build is pushed, built, followed over SSE to its end and downloaded over
HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.sentinel import Sentinel

from service.run import free_port, redis_server_binary, start_redis, stop
from service.store.redis_conn import sentinel_target
from service.store.state import State
from tests.faults.fault_helpers import auth, jsonl_of, worker_settings, workers
from tests.integration.test_sse_streams import api_process
from tests.integration.test_worker_faults import distinct_sharegpt

MASTER = "tuneset-test"


def test_a_sentinel_url_names_its_sentinels_master_database_and_password() -> None:
    target = sentinel_target(
        "sentinel://:s3cret@10.0.0.1:26379;sentinel://:s3cret@10.0.0.2/3?master_name=prod"
    )
    assert target is not None
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (target.master, target.db, target.password) == ("prod", 3, "s3cret")
    assert sentinel_target("redis://127.0.0.1:6379/0") is None
    with pytest.raises(ValueError, match="not a sentinel"):
        sentinel_target("sentinel://10.0.0.1:26379;redis://10.0.0.2:6379")


@contextlib.contextmanager
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """A master, its replica and one Sentinel watching them; yields (URL, master port, replica port)."""
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    procs = [start_redis(tmp_path / "master", master_port), start_redis(tmp_path / "replica", replica_port)]
    try:
        replica = redis.Redis(port=replica_port)
        replica.replicaof("127.0.0.1", master_port)
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 2000\nsentinel failover-timeout {MASTER} 10000\n"
        )
        procs.append(
            subprocess.Popen(
                [redis_server_binary(), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        sentinel = redis.Redis(port=sentinel_port)
        deadline = time.monotonic() + 30
        while True:  # the sentinel knows the master and has found its replica
            with contextlib.suppress(redis.RedisError):
                link: dict[str, Any] = replica.info("replication")  # type: ignore[assignment]
                if link.get("master_link_status") == "up" and sentinel.sentinel_slaves(MASTER):  # type: ignore[no-untyped-call]
                    break
            assert time.monotonic() < deadline, "the sentinel never saw the replica"
            time.sleep(0.1)
        yield f"sentinel://127.0.0.1:{sentinel_port}/0?master_name={MASTER}", master_port, replica_port
    finally:
        for proc in reversed(procs):
            stop(proc)


def _role(port: int) -> str:
    info: dict[str, Any] = redis.Redis(port=port, decode_responses=True).info("replication")  # type: ignore[assignment]
    return str(info["role"])


def _build_and_download(http: httpx.Client, key: str, rows: int) -> str:
    r = http.post("/v1/datasets", json={"name": f"sentinel-{rows}", "kind": "chat"}, headers=auth(key))
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    r = http.post(
        f"/v1/datasets/{dataset}/batches",
        content=jsonl_of(distinct_sharegpt(1)[:rows]),
        headers={**auth(key), "Content-Type": "application/jsonl"},
    )
    assert r.status_code == 201, r.text
    r = http.post(f"/v1/datasets/{dataset}/builds", json={"model": "gpt-4o-mini"}, headers=auth(key))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(key)) as stream:
        text = "".join(stream.iter_text())  # the stream ends with the job
    assert '"status":"succeeded"' in text.replace(" ", ""), text[-500:]
    listing = http.get(f"/v1/jobs/{job_id}/artifacts", headers=auth(key)).json()["items"]
    assert {"train.jsonl", "report.json"} <= {a["name"] for a in listing}
    for item in listing:
        data = http.get(f"/v1/jobs/{job_id}/artifacts/{item['name']}", headers=auth(key))
        assert data.status_code == 200
        assert hashlib.sha256(data.content).hexdigest() == item["sha256"]
    return str(job_id)


@pytest.mark.slow
def test_builds_run_through_sentinel_and_after_a_failover(tmp_path: Path) -> None:
    with sentinel_setup(tmp_path) as (url, master_port, replica_port):
        key = State.from_url(url).create_key("acme")
        with (
            api_process(url, tmp_path) as api,
            workers(worker_settings(url, tmp_path)),
            httpx.Client(base_url=api.base, timeout=30) as http,
        ):
            _build_and_download(http, key, 40)

            target = sentinel_target(url)
            assert target is not None
            sentinel = redis.Redis(port=target.sentinels[0][1], decode_responses=True)
            sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 60
            manager = Sentinel(target.sentinels)  # type: ignore[no-untyped-call]
            while manager.discover_master(MASTER)[1] != replica_port:  # type: ignore[no-untyped-call]
                assert time.monotonic() < deadline, "no failover"
                time.sleep(0.1)
            while _role(replica_port) != "master" or _role(master_port) != "slave":
                assert time.monotonic() < deadline, "the replica was not promoted, or the master not demoted"
                time.sleep(0.1)

            after = _build_and_download(http, key, 60)  # the same API and worker, on the new master
            assert State.from_url(f"redis://127.0.0.1:{replica_port}/0").jobs.get(after) is not None
