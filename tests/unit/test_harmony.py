"""Our declarative `harmony` template gives exactly the token ids of OpenAI's own renderer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.core.conversation import ChatExample, text_of
from service.core.encodings import write_rank_file
from service.core.templates import get_template
from service.core.view import build_view
from tests.conftest import chat, mtbench_conversations, sharegpt_conversations

oh = pytest.importorskip("openai_harmony")


@pytest.fixture(scope="module")
def harmony_encoding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("encodings")
    write_rank_file("o200k_base", folder)  # openai-harmony reads it from here instead of downloading
    old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
    try:
        yield oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = old


def reference_tokens(encoding: Any, example: ChatExample) -> list[int]:
    """The conversation as openai-harmony's Message objects, rendered for training."""
    messages = []
    names: dict[str, str] = {}
    for m in example.messages:
        text = text_of(m)
        if m.role == "system":
            content = oh.DeveloperContent.new().with_instructions(text)
            messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, content))
        elif m.role == "user":
            messages.append(oh.Message.from_role_and_content(oh.Role.USER, text))
        elif m.role == "assistant":
            if m.content is not None or not m.tool_calls:
                messages.append(
                    oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel("final")
                )
            for call in m.tool_calls or []:
                names[call.id] = call.function.name
                messages.append(
                    oh.Message.from_role_and_content(oh.Role.ASSISTANT, call.function.arguments)
                    .with_channel("commentary")
                    .with_recipient(f"functions.{call.function.name}")
                    .with_content_type("<|constrain|>json")
                )
        elif m.role == "tool":
            author = oh.Author.new(oh.Role.TOOL, f"functions.{names[m.tool_call_id or '']}")
            messages.append(
                oh.Message.from_author_and_content(author, text)
                .with_channel("commentary")
                .with_recipient("assistant")
            )
    tokens: list[int] = encoding.render_conversation_for_training(oh.Conversation.from_messages(messages))
    return tokens


def _examples() -> list[ChatExample]:
    convos = mtbench_conversations() + sharegpt_conversations()
    out = [chat(*c["messages"]) for c in convos]
    # the same conversations with a system prompt, and ending on a user turn
    out += [
        chat({"role": "system", "content": "You are a concise sales assistant."}, *c["messages"])
        for c in convos[:60]
    ]
    out += [chat(*c["messages"][:-1]) for c in convos[:60] if len(c["messages"]) > 2]
    return out


def test_harmony_template_matches_openai_harmony_on_real_conversations(harmony_encoding: Any) -> None:
    template = get_template("harmony")
    examples = _examples()
    assert len(examples) > 600
    for i, example in enumerate(examples):
        ours = build_view(example, template).token_ids()
        assert ours == reference_tokens(harmony_encoding, example), f"conversation {i} differs"


def test_harmony_template_matches_on_tool_calls(harmony_encoding: Any) -> None:
    example = chat(
        {"role": "system", "content": "Be terse."},
        ("user", "Weather in Paris?"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
        ("assistant", "21 degrees."),
    )
    assert build_view(example, get_template("harmony")).token_ids() == reference_tokens(
        harmony_encoding, example
    )


def test_data_dir_is_real(data_dir: Path) -> None:
    assert (data_dir / "sharegpt_fastchat_dummy.json").stat().st_size > 200_000
