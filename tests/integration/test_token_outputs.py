"""Token-level outputs through real Celery workers on a real redis-server.

The tokenized Parquet loads with `datasets.load_dataset("parquet", ...)`; every row is the
training view of its line in train.jsonl / validation.jsonl (ids, labels -100 where the view
does not train, attention mask all 1, messages_hash the SHA-256 of the line). The packed Parquet
holds every training example's pieces (the `split` policy at turn boundaries) exactly once,
positions restarting per document. Both manifests name the SHA-256 of the shipped rank file and
of the template's canonical JSON, and a second build gives byte-identical artifacts."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from collections import defaultdict
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec

from service.core.conversation import ChatExample
from service.core.encodings import BUILTIN_ENCODINGS
from service.core.packing import IGNORE, document_from_view, piece_spans
from service.core.templates import get_template
from service.core.view import TrainingView, build_view
from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import State
from tests.integration.test_build_worker import _dataset, _wait
from tests.integration.test_sharded_build import _examples
from workers.sharded import artifact_digests

SEQ_LEN = 512
SPEC_OUTPUTS: dict[str, Any] = {
    "openai_jsonl": {},
    "packed": {"seq_len": SEQ_LEN, "template": "chatml", "oversize": "split", "rows_per_shard": 40},
    "tokenized": {"template": "harmony", "rows_per_shard": 60},
}


def _labels(view: TrainingView) -> list[int]:
    return [t if trained else IGNORE for t, trained in zip(view.token_ids(), view.labels_mask(), strict=True)]


def _rank_sha256(encoding: str) -> str:
    name = BUILTIN_ENCODINGS[encoding].ranks.filename
    return hashlib.sha256(
        gzip.decompress(resources.files("service.core.data").joinpath(name).read_bytes())
    ).hexdigest()


def _template_sha256(name: str) -> str:
    canonical = json.dumps(msgspec.to_builtins(get_template(name)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _build(settings: Settings, dataset_id: str) -> dict[str, Any]:
    state = State.from_url(settings.redis_url)
    spec = {
        "dataset_id": dataset_id,
        "recipe": {},
        "shard_size": 150,
        "split": {"validation_fraction": 0.1, "seed": 3},
        "outputs": SPEC_OUTPUTS,
    }
    job = state.jobs.create("acme", decode_spec("build", spec))
    enqueue(settings, BUILD_TASK, [job["id"]])
    done = _wait(state, job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    return done


def test_tokenized_and_packed_outputs_match_the_views_and_reruns(
    settings: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    import datasets  # type: ignore[import-untyped]

    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(state, blobs, "acme", _examples()[:700])
    first, second = _build(settings, dataset_id), _build(settings, dataset_id)
    assert artifact_digests(blobs, first) == artifact_digests(blobs, second)

    out = tmp_path / "artifacts"
    for a in first["result"]["artifacts"]:
        data = blobs.get(a["key"])
        assert hashlib.sha256(data).hexdigest() == a["sha256"]
        (out / a["name"]).parent.mkdir(parents=True, exist_ok=True)
        (out / a["name"]).write_bytes(data)
    lines = {side: (out / f"{side}.jsonl").read_bytes().splitlines() for side in ("train", "validation")}
    assert lines["train"]
    assert lines["validation"]

    # tokenized: every line of each side, in order, as its harmony view
    manifest = json.loads((out / "tokenized" / "manifest.json").read_text())
    assert manifest["template"] == "harmony"
    assert manifest["profile"] is None
    assert manifest["tokenizer_sha256"] == _rank_sha256("o200k_harmony")
    assert manifest["template_sha256"] == _template_sha256("harmony")
    files = {side: sorted(str(p) for p in (out / "tokenized").glob(f"{side}-*.parquet")) for side in lines}
    assert [Path(f).name for f in files["train"]] == [
        f"train-{i:05d}.parquet" for i in range(-(-len(lines["train"]) // 60))
    ]
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    harmony = get_template("harmony")
    tokens = trained = 0
    for side, side_lines in lines.items():
        rows = loaded[side]
        assert rows.column_names == ["input_ids", "labels", "attention_mask", "messages_hash"]
        assert len(rows) == len(side_lines) == manifest["splits"][side]["rows"]
        for row, line in zip(rows, side_lines, strict=True):
            view = build_view(msgspec.json.decode(line, type=ChatExample), harmony)
            assert row["messages_hash"] == hashlib.sha256(line).hexdigest()
            assert row["input_ids"] == view.token_ids()
            assert row["labels"] == _labels(view)
            assert row["attention_mask"] == [1] * len(row["input_ids"])
            tokens += len(row["input_ids"])
            trained += view.trained_tokens
    assert (manifest["rows"], manifest["tokens"], manifest["trained_tokens"]) == (
        len(lines["train"]) + len(lines["validation"]),
        tokens,
        trained,
    )

    # packed: each training example's pieces exactly once, documents in dataset order
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    packed = json.loads((out / "packed" / "manifest.json").read_text())
    assert packed["tokenizer_sha256"] == _rank_sha256("cl100k_im")
    assert packed["template_sha256"] == _template_sha256("chatml")
    assert packed["template"] == "chatml"
    assert all(s["rows"] <= 40 for s in packed["shards"])
    pieces: dict[int, list[tuple[list[int], list[int]]]] = defaultdict(list)
    for shard in packed["shards"]:
        for row in pq.read_table(out / "packed" / shard["name"]).to_pylist():
            assert row["length"] == len(row["input_ids"]) <= SEQ_LEN
            for k, (start, end) in enumerate(pairwise(row["cu_seqlens"])):
                assert row["position_ids"][start:end] == list(range(end - start))
                pieces[row["doc_ids"][k]].append((row["input_ids"][start:end], row["labels"][start:end]))
    chatml = get_template("chatml")
    assert len(pieces) == len(lines["train"])  # split drops no example
    split = 0
    for doc_id, line in zip(sorted(pieces), lines["train"], strict=True):
        view = build_view(msgspec.json.decode(line, type=ChatExample), chatml)
        ids, labels, turns = view.token_ids(), _labels(view), document_from_view(view)[2]
        spans, outcome, _, _ = piece_spans(len(ids), SEQ_LEN, "split", turns)
        split += outcome == "split"
        expected = sorted((ids[a:b], labels[a:b]) for a, b in spans)
        assert sorted(pieces[doc_id]) == expected
    assert split > 0  # the data has examples over seq_len: the split policy was exercised
    assert packed["totals"]["packing"]["split"] == split
    assert packed["totals"]["trained_tokens"] == sum(
        1 for doc in pieces.values() for _, labs in doc for x in labs if x != IGNORE
    )
