"""The sharded build on the S3-compatible blob store, the only thing workers on several machines share.

An S3 server (moto's server mode) runs in this process on 127.0.0.1; the workers are real
processes that build their blob store from the `TUNESET_S3_*` settings. Nothing connects
anywhere but 127.0.0.1: the endpoint is given explicitly, and so are dummy credentials and a
region, so boto3 never looks for a metadata service.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest
from moto.server import ThreadedMotoServer

from service.core.conversation import ChatExample
from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.run import free_port, stop
from service.settings import Settings
from service.store.blobs import CHUNK, BlobNotFound, BlobStore, LocalBlobStore, S3BlobStore
from service.store.state import State
from tests.integration.conftest import settings_env
from tests.integration.test_build_worker import _wait
from tests.integration.test_sharded_build import _digests, _examples
from tests.integration.test_worker_faults import _start_worker

REGION = "us-east-1"
SPEC: dict[str, Any] = {
    "recipe": {},
    "shard_size": 400,
    "outputs": {
        "openai_jsonl": {},
        "report": {},
        "packed": {"seq_len": 2048, "template": "chatml", "rows_per_shard": 100},
    },
}


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1; stopped afterwards."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # never through a proxy, even if one is configured
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty bucket: moto keeps its buckets in the process, across servers."""
    name = f"tuneset-test-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=name)
    return name


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3(s3_endpoint: str, bucket: str) -> S3BlobStore:
    return S3BlobStore(bucket, _client(s3_endpoint))


def _s3_env(settings: Settings) -> dict[str, str]:
    """`settings_env` plus the S3 blob store's settings, as a worker on another machine gets them."""
    assert settings.s3_endpoint_url is not None
    assert settings.s3_access_key_id is not None
    assert settings.s3_secret_access_key is not None
    return {
        **settings_env(settings),
        "TUNESET_BLOB_BACKEND": settings.blob_backend,
        "TUNESET_S3_BUCKET": settings.s3_bucket,
        "TUNESET_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "TUNESET_S3_REGION": settings.s3_region,
        "TUNESET_S3_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value(),
        "TUNESET_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        "NO_PROXY": "127.0.0.1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _start_s3_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """`_start_worker` with the S3 settings in the worker's environment."""
    return _start_worker(settings, log, _s3_env(settings))


def _put_batches(blobs: BlobStore, tenant: str, dataset_id: str, examples: list[dict[str, Any]]) -> list[str]:
    """The dataset's two batches (as in test_sharded_build: 5 + 2 shards of 400), stored in `blobs`."""
    keys = []
    for name, part in (("b1", examples[:2000]), ("b2", examples[2000:])):
        key = f"{tenant}/{dataset_id}/batches/{name}.jsonl"
        blobs.put(key, b"".join(msgspec.json.encode(msgspec.convert(e, ChatExample)) + b"\n" for e in part))
        keys.append(key)
    return keys


def _dataset(state: State, stores: list[BlobStore], examples: list[dict[str, Any]]) -> str:
    """One dataset in Redis whose batches are in every given store, under the same keys."""
    ds = state.create_dataset("acme", "support chats", "chat", None)
    dataset_id = str(ds["id"])
    keys: list[str] = []
    for blobs in stores:
        keys = _put_batches(blobs, "acme", dataset_id, examples)
    for (name, n), key in zip((("b1", 2000), ("b2", len(examples) - 2000)), keys, strict=True):
        state.add_batch("acme", dataset_id, {"id": name, "examples": n, "bytes": 1, "key": key})
    return dataset_id


def _build(settings: Settings, blobs: BlobStore, dataset_id: str) -> dict[str, Any]:
    """Run the build; it succeeds in 7 shards and leaves no work files. Returns the job."""
    state = State.from_url(settings.redis_url)
    job = state.jobs.create("acme", decode_spec("build", {"dataset_id": dataset_id, **SPEC}))
    enqueue(settings, BUILD_TASK, [job["id"]])
    done = _wait(state, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["result"]["shards"] == 7
    work = f"acme/jobs/{job['id']}/work/"
    deadline = time.monotonic() + 10  # the finalize removes its work files right after finishing the job
    while blobs.list(work):
        assert time.monotonic() < deadline, f"work files left behind: {blobs.list(work)}"
        time.sleep(0.1)
    return done


def test_two_workers_build_on_s3_as_on_the_local_store(
    settings: Settings, s3_endpoint: str, bucket: str, s3: S3BlobStore, tmp_path: Path
) -> None:
    s3_settings = Settings(
        redis_url=settings.redis_url,
        data_dir=tmp_path / "s3-data",  # worker logs only: no blob may land on a local disk
        build_time_limit_s=settings.build_time_limit_s,
        visibility_timeout_s=settings.visibility_timeout_s,
        blob_backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=s3_endpoint,
        s3_region=REGION,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    state = State.from_url(settings.redis_url)
    local = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(state, [local, s3], _examples())

    # The same build on the local store first; its workers are gone before the S3 ones start,
    # since they share the queue.
    local_workers = [_start_worker(settings, settings.data_dir / f"local-w{i}.log") for i in range(2)]
    try:
        local_job = _build(settings, local, dataset_id)
    finally:
        for w in local_workers:
            stop(w)

    s3_workers = [_start_s3_worker(s3_settings, s3_settings.data_dir / f"s3-w{i}.log") for i in range(2)]
    try:
        s3_job = _build(s3_settings, s3, dataset_id)
    finally:
        for w in s3_workers:
            stop(w)

    on_local, on_s3 = local_job["result"]["artifacts"], s3_job["result"]["artifacts"]
    names = {a["name"] for a in on_s3}
    assert {"report.json", "train.jsonl", "packed/manifest.json", "packed/packed-00000.parquet"} <= names
    for artifact in on_s3:  # every artifact is in the bucket, as recorded
        assert artifact["key"].startswith("acme/jobs/")
        assert s3.size(artifact["key"]) == artifact["size"]
        assert hashlib.sha256(s3.get(artifact["key"])).hexdigest() == artifact["sha256"]
    job_dir = on_s3[0]["key"].rsplit("/", 1)[0]
    assert s3.list(f"{job_dir}/") == sorted(a["key"] for a in on_s3)  # nothing else: no work files
    assert _digests(s3, s3_job) == _digests(local, local_job)  # the reports differ only in the job they name
    assert {a["name"]: a["size"] for a in on_s3} == {a["name"]: a["size"] for a in on_local}
    assert not s3_settings.blob_root.exists()  # the S3 workers wrote nothing to a local blob store
    logs = [(s3_settings.data_dir / f"s3-w{i}.log").read_text() for i in range(2)]
    assert all("tuneset.build_shard" in log for log in logs)  # both workers took shards


def test_s3_blob_store_put_get_exists_size_list(s3: S3BlobStore) -> None:
    s3.put("acme/ds_1/batches/b1.jsonl", b'{"a": 1}\n')
    s3.put("acme/ds_1/batches/b2.jsonl", b"")
    assert s3.get("acme/ds_1/batches/b1.jsonl") == b'{"a": 1}\n'
    assert s3.get("acme/ds_1/batches/b2.jsonl") == b""
    assert s3.exists("acme/ds_1/batches/b1.jsonl")
    assert not s3.exists("acme/ds_1/batches/b3.jsonl")
    assert s3.size("acme/ds_1/batches/b1.jsonl") == 9
    assert s3.size("acme/ds_1/batches/b2.jsonl") == 0
    s3.put("acme/ds_1/batches/b1.jsonl", b"replaced")  # a put replaces the blob whole
    assert s3.get("acme/ds_1/batches/b1.jsonl") == b"replaced"
    assert s3.list("acme/ds_1/") == ["acme/ds_1/batches/b1.jsonl", "acme/ds_1/batches/b2.jsonl"]
    assert s3.list("acme/nothing/") == []
    with pytest.raises(BlobNotFound):
        s3.get("acme/ds_1/batches/b3.jsonl")
    with pytest.raises(BlobNotFound):
        s3.size("acme/ds_1/batches/b3.jsonl")
    with pytest.raises(BlobNotFound):
        list(s3.open_chunks("acme/ds_1/batches/b3.jsonl"))
    for bad in ("", "/abs", "a/../b", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="invalid blob key"):
            s3.put(bad, b"x")


def test_s3_open_chunks_streams_a_blob_larger_than_one_chunk(s3: S3BlobStore) -> None:
    data = hashlib.sha256(b"seed").digest() * ((2 * CHUNK + 12345) // 32 + 1)
    assert len(data) > 2 * CHUNK
    s3.put("acme/big.bin", data)
    chunks = list(s3.open_chunks("acme/big.bin"))
    assert len(chunks) == 3
    assert all(len(c) == CHUNK for c in chunks[:-1])
    assert b"".join(chunks) == data


def _siblings(s3: S3BlobStore) -> None:
    for key in (
        "a/ds_1/batches/b1.jsonl",
        "a/ds_1/jobs/j/train.jsonl",
        "a/ds_10/batches/b1.jsonl",
        "a/ds_2/x",
    ):
        s3.put(key, b"x")


def test_s3_delete_prefix_with_a_trailing_slash_spares_sibling_prefixes(s3: S3BlobStore) -> None:
    _siblings(s3)
    assert s3.delete_prefix("a/ds_1/") == 2
    assert s3.list("a/") == ["a/ds_10/batches/b1.jsonl", "a/ds_2/x"]
    assert s3.delete_prefix("a/ds_1/") == 0
    with pytest.raises(ValueError, match="invalid blob key"):
        s3.delete_prefix("")  # never the whole bucket


def test_s3_delete_prefix_deletes_more_than_one_request_holds(s3: S3BlobStore) -> None:
    for i in range(1001):  # delete_objects takes at most 1,000 keys a request
        s3.put(f"a/many/{i:05d}", b"")
    s3.put("a/keep", b"k")
    assert s3.delete_prefix("a/many/") == 1001
    assert s3.list("a/") == ["a/keep"]


def test_s3_delete_prefix_without_a_trailing_slash_spares_sibling_prefixes(s3: S3BlobStore) -> None:
    _siblings(s3)
    s3.delete_prefix("a/ds_1")
    assert s3.list("a/") == ["a/ds_10/batches/b1.jsonl", "a/ds_2/x"]
