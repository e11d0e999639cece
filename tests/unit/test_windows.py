"""Window splitting, by property: every trained turn is trained exactly once, windows fit, no orphans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.core.accounting import REPLY_PRIMING, Accountant
from service.core.conversation import ChatExample
from service.core.models import load_table
from service.core.pipeline import Recipe, run
from service.core.problems import Action
from service.core.repair import split_windows

ACCOUNTANT = Accountant("o200k_base")
WORDS = st.lists(
    st.sampled_from(["alpha", "beta", "gamma", "delta", "sales", "price", "quote"]), min_size=1, max_size=30
)


@st.composite
def long_conversations(draw: st.DrawFn) -> ChatExample:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": "You sell things. " * draw(st.integers(1, 4))})
    for i in range(draw(st.integers(2, 14))):
        text = f"m{i} " + " ".join(draw(WORDS))
        kind = draw(st.sampled_from(["user", "assistant", "assistant", "call"]))
        if kind == "call":
            call_id = f"c{i}"
            messages.append(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": 1}'},
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "assistant":
            m: dict[str, Any] = {"role": "assistant", "content": text}
            if draw(st.integers(0, 4)) == 0:
                m["weight"] = 0
            messages.append(m)
        else:
            messages.append({"role": "user", "content": text})
    return msgspec.convert({"messages": messages}, ChatExample)


def _key(m: Any) -> str:
    return msgspec.json.encode(msgspec.structs.replace(m, weight=None)).decode()


@settings(max_examples=400, deadline=None)
@given(example=long_conversations(), fraction=st.floats(0.05, 1.0))
def test_windows_train_every_turn_once_and_fit(example: ChatExample, fraction: float) -> None:
    tokens = ACCOUNTANT.chat(example, detail=True)
    assert tokens.per_message is not None
    billed = [c.billed for c in tokens.per_message]
    limit = max(1, int(tokens.billed * fraction))
    windows, _ = split_windows(example, 1, billed, REPLY_PRIMING, limit)

    n_sys = next((i for i, m in enumerate(example.messages) if m.role != "system"), len(example.messages))
    trained = [
        _key(m)
        for i, m in enumerate(example.messages)
        if i >= n_sys and m.role == "assistant" and m.weight != 0
    ]
    assume(trained)  # with nothing to train there is nothing to split
    trained_in_windows = [
        _key(m) for w in windows for m in w.messages[n_sys:] if m.role == "assistant" and m.weight != 0
    ]
    assert sorted(trained_in_windows) == sorted(trained)  # each trained turn exactly once

    originals = [_key(m) for m in example.messages]
    for w in windows:
        assert w.messages[:n_sys] == example.messages[:n_sys]  # the system prompt in every window
        body = [_key(m) for m in w.messages[n_sys:]]
        start = originals.index(body[0])
        assert originals[start : start + len(body)] == body  # a contiguous run of the conversation
        assert w.messages[-1].role == "assistant"
        assert w.messages[-1].weight != 0  # ends on a trained turn
        made: set[str] = set()
        for m in w.messages:
            made.update(c.id for c in m.tool_calls or [])
            if m.role == "tool":
                assert m.tool_call_id in made  # no tool result without its call
        cost = ACCOUNTANT.chat(w).billed
        if cost > limit:  # only a turn too long to fit with any context stays over the limit
            alone = sum(billed[:n_sys]) + billed[start + n_sys - n_sys + len(body) - 1 + 0] + REPLY_PRIMING
            assert (
                alone > limit
                or len([m for m in w.messages[n_sys:] if m.role == "assistant" and m.weight != 0]) == 1
            )


def test_split_in_the_pipeline_reports_trained_tokens_before_and_after(tmp_path: Path) -> None:
    """Splitting is a fix like the others: the report counts the original's trained tokens before it."""
    table_file = tmp_path / "models.toml"
    table_file.write_text('[models.tiny]\nencoding = "o200k_base"\nmax_tokens = 60\nmin_examples = 1\n')
    words = " ".join(["alpha"] * 30)
    example = {
        "messages": [
            {"role": "user", "content": words},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome."},
        ]
    }
    original = ACCOUNTANT.chat(msgspec.convert(example, ChatExample)).trained
    outputs: list[Any] = []
    report = run(
        [json.dumps(example).encode()],
        Recipe(model="tiny", policies={"over_token_limit": Action.FIX}),
        sink=outputs.append,
        table=load_table(table_file),
    )
    assert report.fixes == {"split_windows": 1}
    assert report.fix_effect.trained_before == report.fix_effect.trained_after == original
    assert report.tokens.trained_total == original  # every trained turn, exactly once
    texts = [
        m.content for o in outputs for m in o.example.messages if m.role == "assistant" and m.weight != 0
    ]
    assert "It is sunny." in texts
