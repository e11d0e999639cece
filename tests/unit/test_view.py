"""The training view: per-segment tokenization equals whole-string tokenization, masks are exact."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.accounting import Accountant
from service.core.conversation import ChatExample
from service.core.models import load_table
from service.core.templates import BUILTIN_TEMPLATES, get_template, provider_template
from service.core.view import build_view, rendered_text
from tests.conftest import chat, mtbench_conversations

# Text that provokes pre-tokenizer boundary effects (whitespace runs, newlines, '/', contractions).
tricky = st.text(
    alphabet=st.sampled_from([" ", "\n", "\t", "\r", "a", "B", "1", ".", "/", "'", "s", "é", "}", "{", "中"]),
    max_size=12,
)
text = st.one_of(
    tricky, st.text(max_size=40), st.tuples(tricky, st.text(max_size=20), tricky).map("".join)
).filter(lambda s: "<|" not in s)
ident = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)


@st.composite
def conversations(draw: st.DrawFn) -> ChatExample:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for i in range(draw(st.integers(1, 6))):
        role = draw(st.sampled_from(["user", "assistant", "assistant", "tool"]))
        if role == "tool":
            calls = [c for m in messages if m.get("tool_calls") for c in m["tool_calls"]]
            if not calls:
                role = "user"
            else:
                messages.append({"role": "tool", "tool_call_id": calls[-1]["id"], "content": draw(text)})
                continue
        m: dict[str, Any] = {"role": role, "content": draw(text)}
        if role == "assistant":
            if draw(st.booleans()):
                m["weight"] = draw(st.sampled_from([0, 1]))
            if draw(st.integers(0, 4)) == 0:
                m["tool_calls"] = [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": draw(ident), "arguments": draw(text)},
                    }
                ]
                if draw(st.booleans()):
                    m["content"] = None
        elif draw(st.integers(0, 5)) == 0:
            m["name"] = draw(ident)
        messages.append(m)
    return msgspec.convert({"messages": messages}, ChatExample)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=conversations())
def test_segments_concatenate_to_the_whole_string_tokenization(name: str, example: ChatExample) -> None:
    template = get_template(name)
    view = build_view(example, template)
    from service.core.encodings import get_encoding

    enc = get_encoding(template.encoding)
    whole = enc.encode(rendered_text(view.segments), allowed_special="all")
    assert view.token_ids() == whole


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@settings(max_examples=300, deadline=None)
@given(example=conversations())
def test_provider_view_agrees_with_billing(encoding: str, example: ChatExample) -> None:
    """For provider targets the view is the bill: same billed and trained counts as the accountant."""
    accountant = Accountant(encoding, 7)
    tokens = accountant.chat(example)
    view = build_view(example, provider_template(encoding))
    assert view.total_tokens == tokens.billed
    assert view.trained_tokens == tokens.trained


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
@settings(max_examples=200, deadline=None)
@given(example=conversations())
def test_trained_segments_are_exactly_weight_1_assistant_turns(name: str, example: ChatExample) -> None:
    view = build_view(example, get_template(name))
    for seg in view.segments:
        if seg.trained:
            assert seg.message_index is not None
            m = example.messages[seg.message_index]
            assert m.role == "assistant"
            assert m.weight != 0
    trained_messages = {s.message_index for s in view.segments if s.trained}
    expected = {i for i, m in enumerate(example.messages) if m.role == "assistant" and m.weight != 0}
    assert trained_messages == expected  # every trained turn has at least its end-of-turn token trained


def test_end_of_turn_token_is_trained_and_configurable() -> None:
    example = chat(("user", "Hi"), ("assistant", "Hello."))
    template = get_template("chatml")
    view = build_view(example, template)
    end = [s for s in view.segments if s.text == "<|im_end|>" and s.message_index == 1]
    assert len(end) == 1
    assert end[0].trained
    assert "learns to stop" in end[0].reason
    no_eot = msgspec.structs.replace(template, name="chatml-no-eot", train_end=False)
    view2 = build_view(example, no_eot)
    assert view2.trained_tokens == view.trained_tokens - 1


def test_reasons_name_the_irregular_turns() -> None:
    example = chat(
        {"role": "system", "content": "Sell."},
        ("user", "Hi"),
        {"role": "assistant", "content": "Hello.", "weight": 0},
        ("user", "Price?"),
        ("assistant", "Ten."),
        ("user", "Thanks, bye"),
    )
    model = load_table().resolve("gpt-4o-mini")
    view = build_view(example, provider_template(model.encoding))
    reasons = {(s.message_index, s.reason) for s in view.segments if s.text and not s.text.startswith("<|")}
    assert (2, "assistant weight 0: context, not trained") in reasons
    assert (4, "assistant weight 1: trained") in reasons
    assert (5, "trailing user: billed, never trained") in reasons
    assert (0, "system prompt: context, not trained") in reasons


def test_chatml_leading_whitespace_content_keeps_exact_tokens() -> None:
    """ChatML's `role\\n` header merges with content that starts with newlines: handled, not mislabelled."""
    example = chat(("user", "\n\nHi"), ("assistant", "\n\n  Hello"))
    view = build_view(example, get_template("chatml"))
    from service.core.encodings import get_encoding

    enc = get_encoding("cl100k_im")
    assert view.token_ids() == enc.encode(rendered_text(view.segments), allowed_special="all")
    assistant_text = next(
        s for s in view.segments if s.message_index == 1 and s.trained and "Hello" in s.text
    )
    assert enc.decode(assistant_text.token_ids).endswith("Hello")


def test_real_conversations_render_for_every_template() -> None:
    for convo in mtbench_conversations():
        example = chat(*convo["messages"])
        for name in BUILTIN_TEMPLATES:
            view = build_view(example, get_template(name))
            assert view.trained_tokens > 0
            assert view.trained_tokens < view.total_tokens


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_provider_view_bills_names_and_call_ids_on_any_role(encoding: str) -> None:
    example = chat(
        {"role": "user", "content": "Weather?", "name": "ann"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "w", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    )
    view = build_view(example, provider_template(encoding))
    tokens = Accountant(encoding, 7).chat(example)
    assert (view.total_tokens, view.trained_tokens) == (tokens.billed, tokens.trained)


def test_provider_view_says_when_tool_definitions_are_billed_but_not_shown() -> None:
    tools = [{"type": "function", "function": {"name": "w", "description": "Weather.", "parameters": {}}}]
    example = chat(("user", "Weather?"), ("assistant", "Sunny."), tools=tools)
    view = build_view(example, provider_template("o200k_base"))
    assert view.notes
