"""A build counts lines and written examples apart: a line that gives several examples (windows,
or one per turn) stays counted once, and is dropped only when none of its examples is left."""

from __future__ import annotations

from typing import Any

import msgspec

from service.jobs import decode_spec
from service.queue import BUILD_TASK, enqueue
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.state import State
from tests.integration.test_build_worker import _dataset, _wait


def _m(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


SHORT = [_m("system", "Be brief."), _m("user", "Capital of France?"), _m("assistant", "Paris.")]
# billed 110 tokens: over the 60 of `tiny`, so it is cut into two windows, the first equal to SHORT
LONG = [
    *SHORT,
    _m("user", "Tell me about Rome in detail."),
    _m("assistant", "Rome is the capital of Italy. " * 10),
]


def test_a_line_with_one_duplicate_window_stays_counted(settings: Settings, worker: object) -> None:
    state = State.from_url(settings.redis_url)
    blobs = LocalBlobStore(settings.blob_root)
    dataset_id = _dataset(state, blobs, "acme", [{"messages": SHORT}, {"messages": LONG}])
    spec = {
        "dataset_id": dataset_id,
        "recipe": {"model": "tiny", "policies": {"over_token_limit": "fix"}},
        "models": {"tiny": {"encoding": "o200k_base", "max_tokens": 60, "min_examples": 1}},
        "dedupe": {"exact": True},
        "shard_size": 1,  # the duplicate is found across shards, at the finalize
    }
    job = state.jobs.create("acme", decode_spec("build", spec))
    enqueue(settings, BUILD_TASK, [job["id"]])
    done = _wait(state, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    files = {a["name"]: blobs.get(a["key"]) for a in done["result"]["artifacts"]}
    train = [msgspec.json.decode(line)["messages"] for line in files["train.jsonl"].splitlines()]
    assert train[0] == SHORT
    assert len(train) == 2  # SHORT, and LONG's second window (its first duplicates SHORT)
    assert train[1][-1] == LONG[-1]
    report = msgspec.json.decode(files["report.json"])
    assert done["result"]["duplicates_removed"] == 1
    # two lines, both written from: neither is counted as dropped
    assert (report["examples"], report["examples_ok"], report["examples_dropped"]) == (2, 2, 0)
    assert report["examples_out"] == 2
    assert report["fixes"] == {"split_windows": 1}
