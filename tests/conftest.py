"""Shared fixtures: the real conversations in tests/data and small helpers to build examples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.core.conversation import ChatExample
from service.core.pipeline import Report
from service.core.problems import Problem

DATA = Path(__file__).parent / "data"


def mtbench_conversations() -> list[dict[str, Any]]:
    """MT-Bench two-turn questions joined with GPT-4's reference answers: real user/assistant chats."""
    questions = {
        q["question_id"]: q
        for q in map(json.loads, (DATA / "mtbench_questions.jsonl").read_text().splitlines())
    }
    out = []
    for line in (DATA / "mtbench_gpt4_reference_answers.jsonl").read_text().splitlines():
        answer = json.loads(line)
        q = questions[answer["question_id"]]
        messages = []
        for user, assistant in zip(q["turns"], answer["choices"][0]["turns"], strict=True):
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        out.append({"messages": messages})
    return out


def sharegpt_conversations() -> list[dict[str, Any]]:
    """The FastChat ShareGPT sample as OpenAI chat values."""
    roles = {"human": "user", "gpt": "assistant"}
    data = json.loads((DATA / "sharegpt_fastchat_dummy.json").read_text())
    return [
        {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in convo["conversations"]]}
        for convo in data
    ]


def chat(*messages: tuple[str, str] | dict[str, Any], **top: Any) -> ChatExample:
    """`chat(("user", "hi"), ("assistant", "hello"))` as a ChatExample."""
    msgs = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in messages]
    return msgspec.convert({"messages": msgs, **top}, ChatExample)


def findings(report: Report) -> list[Problem]:
    """Every finding of a report one by one (`problems` groups them): run it with per_example."""
    assert report.problems_detail is not None, "run with per_example=True"
    return report.problems_detail


def jsonl(*values: Any) -> bytes:
    return b"".join(json.dumps(v).encode() + b"\n" for v in values)


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the session, on a free port of 127.0.0.1; it stops with the session."""
    from service.run import free_port, start_redis, stop

    port = free_port()
    proc = start_redis(tmp_path_factory.mktemp("redis"), port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
