"""The fake provider's own file checks: the provider's messages, naming example and message."""

from __future__ import annotations

from typing import Any

import pytest

from service.providers.fake_validate import check_file
from tests.providers.conftest import chat_examples, jsonl_bytes, preference_examples


def with_example(examples: list[dict[str, Any]], index: int, example: Any) -> bytes:
    examples[index] = example
    return jsonl_bytes(examples)


def test_a_good_chat_file_passes_and_counts_tokens() -> None:
    small = check_file(jsonl_bytes(chat_examples(10)))
    large = check_file(jsonl_bytes(chat_examples(40)))
    assert small.error is None
    assert (small.format, small.examples) == ("chat", 10)
    assert 0 < small.tokens < large.tokens


def test_a_good_preference_file_passes() -> None:
    check = check_file(jsonl_bytes(preference_examples(12)))
    assert check.error is None
    assert (check.format, check.examples) == ("preference", 12)


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"content": "hello"}]},
            "Invalid file format. Example 3, message 2 Discriminator 'role' is missing in value",
        ),
        (
            {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                "weight": 1,
            },
            'Invalid file format. Example 3 contains an extra "weight".',
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "Invalid file format. Example 3 must have at least one message with role 'assistant'",
        ),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            "Invalid file format. Example 3, message 1 Input tag 'robot' found using 'role' does not match "
            "any of the expected tags: 'system', 'user', 'assistant', 'tool', 'function'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a <|fim_suffix|> b"},
                    {"role": "assistant", "content": "x"},
                ]
            },
            "Example 3 message contains an invalid token: <|fim_suffix|>.",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "x", "weight": 2},
                ]
            },
            "Invalid file format. Example 3, message 2 'weight' must be 0 or 1",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]},
            "Invalid file format. Example 3, message 2 is missing key 'tool_call_id'",
        ),
        (
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
            "Invalid file format. Example 3, message 1 is missing key 'content'",
        ),
        (
            {"prompt": "a", "completion": "b"},
            "Invalid file format. Example 3 is in the fine-tune-completions format, but previous examples "
            "are in the fine-tune-chat format.",
        ),
        ({"conversation": []}, "Invalid file format. Example 3 is missing key 'messages'"),
    ],
)
def test_a_bad_example_is_named_with_the_providers_message(example: Any, message: str) -> None:
    check = check_file(with_example(chat_examples(12), 2, example))
    assert check.error == message


def test_assistant_content_may_be_absent_with_tool_calls_and_images_only_in_user_messages() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    ok = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "2"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "weight": 0},
        ]
    }
    assert check_file(with_example(chat_examples(12), 0, ok)).error is None
    image_in_assistant = {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            },
        ]
    }
    assert check_file(with_example(chat_examples(12), 0, image_in_assistant)).error == (
        "Invalid file format. Example 1, message 2 content part 1 of type 'image_url' "
        "is not allowed in assistant messages"
    )


def test_invalid_json_names_the_line() -> None:
    data = jsonl_bytes(chat_examples(5)) + b'{"messages": [\n' + jsonl_bytes(chat_examples(5))
    error = check_file(data).error
    assert error is not None
    assert error.startswith(
        "Invalid file format. Example 6 cannot be parsed. Error: line contains invalid json:"
    )
    assert error.endswith("(line 6)")


def test_too_few_examples_and_unknown_formats() -> None:
    assert check_file(jsonl_bytes(chat_examples(7))).error == (
        "Training file has 7 example(s), but must have at least 10 examples"
    )
    assert check_file(jsonl_bytes([{"text": "x"}] * 10)).error == (
        "Unexpected file format, expected either prompt/completion pairs or chat messages."
    )


def test_preference_examples_need_one_assistant_message_per_side() -> None:
    examples = preference_examples(12)
    examples[4]["preferred_output"].append({"role": "assistant", "content": "again"})
    assert check_file(jsonl_bytes(examples)).error == (
        "Invalid file format. Example 5, 'preferred_output' must hold exactly one message"
    )
    examples = preference_examples(12)
    del examples[0]["non_preferred_output"]
    assert check_file(jsonl_bytes(examples)).error == (
        "Invalid file format. Example 1 is missing key 'non_preferred_output'"
    )
