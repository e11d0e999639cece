"""A build fans out into shards on several workers and gives byte-identical artifacts every time."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec

from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.run import stop
from service.settings import Settings
from service.store.blobs import BlobStore, LocalBlobStore
from service.store.state import State
from tests.conftest import mtbench_conversations, sharegpt_conversations
from tests.integration.test_build_worker import _dataset, _wait
from tests.integration.test_worker_faults import _start_worker
from workers.sharded import artifact_digests


def _examples() -> list[dict[str, Any]]:
    convos = mtbench_conversations() + sharegpt_conversations()
    out = [
        {"messages": [{**m, "content": f"{m['content']} #{i}"} for m in c["messages"]]}
        for i in range(5)
        for c in convos
    ]
    return out + out[:40]  # some exact duplicates, across shards


def _build(settings: Settings, dataset_id: str) -> dict[str, str]:
    state = State.from_url(settings.redis_url)
    spec = {
        "dataset_id": dataset_id,
        "recipe": {},
        "shard_size": 400,
        "outputs": {
            "openai_jsonl": {},
            "report": {},
            "packed": {"seq_len": 2048, "template": "chatml", "rows_per_shard": 100},
        },
    }
    job = state.jobs.create("acme", decode_spec("build", spec))
    enqueue(settings, BUILD_TASK, [job["id"]])
    done = _wait(state, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["result"]["shards"] == 7
    blobs = LocalBlobStore(settings.blob_root)
    deadline = time.monotonic() + 10  # the finalize removes its work files right after finishing the job
    while blobs.list(f"acme/jobs/{job['id']}/work"):
        assert time.monotonic() < deadline, "work files left behind"
        time.sleep(0.1)
    return _digests(blobs, done)


def _digests(blobs: BlobStore, job: dict[str, Any]) -> dict[str, str]:
    """The artifacts' SHA-256 as recorded, checked; the reports' without the build they name
    (its job id and creation date differ from build to build by design)."""
    for a in job["result"]["artifacts"]:
        assert hashlib.sha256(blobs.get(a["key"])).hexdigest() == a["sha256"]
    report = msgspec.json.decode(blobs.get(f"acme/jobs/{job['id']}/report.json"))
    assert report["build"]["job_id"] == job["id"]
    digests = artifact_digests(blobs, job)
    assert {k: v for k, v in digests.items() if not k.startswith("report.")} == {
        a["name"]: a["sha256"] for a in job["result"]["artifacts"] if not a["name"].startswith("report.")
    }
    return digests


def test_same_artifacts_with_one_and_two_workers_and_on_reruns(settings: Settings, tmp_path: Path) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    examples = _examples()
    dataset_id = _dataset(state, blobs, "acme", examples[:2000])
    state.add_batch(
        "acme",
        dataset_id,
        {
            "id": "b2",
            "examples": len(examples) - 2000,
            "bytes": 1,
            "key": _second_batch(blobs, dataset_id, examples[2000:]),
        },
    )
    workers = [_start_worker(settings, settings.data_dir / f"w{i}.log") for i in range(2)]
    try:
        two = _build(settings, dataset_id)
        again = _build(settings, dataset_id)
    finally:
        for w in workers:
            stop(w)
    one_worker = _start_worker(settings, settings.data_dir / "w-solo.log")
    try:
        one = _build(settings, dataset_id)
    finally:
        stop(one_worker)
    assert {
        "report.json",
        "report.html",
        "train.jsonl",
        "packed/manifest.json",
        "packed/packed-00000.parquet",
    } <= set(two)
    assert two == again == one
    _check_packed(settings)
    logs = [(settings.data_dir / f"w{i}.log").read_text() for i in range(2)]
    assert all("tuneset.build_shard" in log for log in logs)  # both workers took shards


def _second_batch(blobs: LocalBlobStore, dataset_id: str, examples: list[dict[str, Any]]) -> str:
    import msgspec

    from service.core.conversation import ChatExample

    key = f"acme/{dataset_id}/batches/b2.jsonl"
    blobs.put(key, b"".join(msgspec.json.encode(msgspec.convert(e, ChatExample)) + b"\n" for e in examples))
    return key


def test_dedupe_and_split_across_shards(settings: Settings, worker: object) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    examples = _examples()  # 2,650 distinct + 40 exact copies spread over the shards
    dataset_id = _dataset(state, blobs, "acme", examples)
    spec = {
        "dataset_id": dataset_id,
        "recipe": {},
        "shard_size": 400,
        "dedupe": {"exact": True, "near": True, "threshold": 0.9},
        "split": {"validation_fraction": 0.1, "seed": 7},
    }
    hashes = []
    for _ in range(2):
        job = state.jobs.create("acme", decode_spec("build", spec))
        enqueue(settings, BUILD_TASK, [job["id"]])
        done = _wait(state, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        result = done["result"]
        files = {a["name"]: blobs.get(a["key"]) for a in result["artifacts"]}
        train, validation = files["train.jsonl"].splitlines(), files["validation.jsonl"].splitlines()
        assert result["duplicates_removed"] >= 40
        assert len(train) + len(validation) == len(examples) - result["duplicates_removed"]
        assert not set(train) & set(validation)  # no example on both sides
        assert 0.05 < len(validation) / (len(train) + len(validation)) < 0.15
        report = msgspec.json.decode(files["report.json"])
        assert report["examples_out"] == len(
            train
        )  # the report is the training file's: validation is not billed
        assert (report["split"]["train"]["examples"], report["split"]["validation"]["examples"]) == (
            len(train),
            len(validation),
        )
        hashes.append(_digests(blobs, done))
    assert hashes[0] == hashes[1]


def _check_packed(settings: Settings) -> None:
    """The packed shards of the last build: every training example's tokens once, within seq_len."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    root = settings.blob_root
    jobs = sorted((root / "acme" / "jobs").iterdir(), key=lambda p: p.name)
    packed = jobs[-1] / "packed"
    manifest = msgspec.json.decode((packed / "manifest.json").read_bytes())
    rows = [r for shard in sorted(packed.glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    assert len(rows) == sum(s["rows"] for s in manifest["shards"])
    assert all(len(r["input_ids"]) <= 2048 for r in rows)
    doc_ids = [d for r in rows for d in r["doc_ids"]]
    train = (jobs[-1] / "train.jsonl").read_bytes().splitlines()
    assert len(set(doc_ids)) == len(train)  # every training example packed (none over 2048 here)
    for r in rows:
        starts = set(r["cu_seqlens"][:-1])
        assert all((p == 0) == (i in starts) for i, p in enumerate(r["position_ids"]))
        assert any(label != -100 for label in r["labels"])


def test_outputs_select_the_files_and_large_sides_are_cut_into_parts(
    settings: Settings, worker: object
) -> None:
    """Only the selected outputs are written; a side over `max_file_bytes` becomes parts within it
    whose concatenation is byte for byte the single file a default build writes."""
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(state, blobs, "acme", _examples()[:1200])
    split = {"validation_fraction": 0.1, "seed": 3}
    results = []
    for outputs in (None, {"openai_jsonl": {"max_file_bytes": 256 * 1024}}):
        spec: dict[str, Any] = {"dataset_id": dataset_id, "recipe": {}, "shard_size": 500, "split": split}
        if outputs is not None:
            spec["outputs"] = outputs
        job = state.jobs.create("acme", decode_spec("build", spec))
        enqueue(settings, BUILD_TASK, [job["id"]])
        done = _wait(state, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        results.append({a["name"]: blobs.get(a["key"]) for a in done["result"]["artifacts"]})
    whole, cut = results
    assert set(whole) == {"report.json", "report.html", "train.jsonl", "validation.jsonl"}
    train_parts = sorted(name for name in cut if name.startswith("train-"))
    assert len(train_parts) >= max(2, -(-len(whole["train.jsonl"]) // (256 * 1024)))
    assert train_parts[0] == f"train-00000-of-{len(train_parts):05d}.jsonl"
    assert set(cut) == {*train_parts, "validation.jsonl"}  # no report: it was not selected
    assert all(0 < len(cut[name]) <= 256 * 1024 for name in train_parts)
    assert b"".join(cut[name] for name in train_parts) == whole["train.jsonl"]
    assert cut["validation.jsonl"] == whole["validation.jsonl"]
