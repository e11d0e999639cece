"""Billing as the OpenAI cookbook counts it, trained tokens, epochs and cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.accounting import (
    Accountant,
    billable_tokens,
    default_epochs,
    estimated_cost,
    truncation_loss,
)
from service.core.models import ModelError, load_table
from tests.conftest import chat

# The cookbook's example conversation (How_to_count_tokens_with_tiktoken.ipynb, section 6).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased "
        "leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
# Section 7: the weather tool.
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


def _accountant(model: str) -> Accountant:
    return Accountant.for_model(load_table().resolve(model))


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-3.5-turbo", 129), ("gpt-4", 129)]
)
def test_cookbook_reference_counts(model: str, expected: int) -> None:
    assert _accountant(model).chat(chat(*COOKBOOK_MESSAGES)).billed == expected


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-3.5-turbo", 105), ("gpt-4", 105)]
)
def test_cookbook_tool_counts(model: str, expected: int) -> None:
    assert _accountant(model).chat(chat(*WEATHER_MESSAGES, tools=WEATHER_TOOLS)).billed == expected


def test_trained_tokens_are_weight_1_assistant_content_plus_end_token() -> None:
    a = _accountant("gpt-4o-mini")
    enc = a.enc
    ex = chat(
        ("user", "Hi there"),
        {"role": "assistant", "content": "Hello, friend.", "weight": 0},
        ("user", "Price?"),
        ("assistant", "Ten dollars."),
    )
    assert a.chat(ex).trained == len(enc.encode_ordinary("Ten dollars.")) + 1
    billed = 3 + sum(
        3 + len(enc.encode_ordinary(m.role)) + len(enc.encode_ordinary(str(m.content))) for m in ex.messages
    )
    assert a.chat(ex).billed == billed


def test_default_epochs_follow_the_cookbook() -> None:
    assert default_epochs(5) == 20  # the cookbook's toy file: 100 // 5
    assert default_epochs(10) == 10
    assert default_epochs(3) == 25  # capped
    assert default_epochs(34) == 3
    assert default_epochs(100) == 3
    assert default_epochs(8334) == 2  # 25000 // 8334
    assert default_epochs(30000) == 1


def test_cost_matches_the_guide() -> None:
    # The guide: 100,000 tokens x 3 epochs is about $0.90 on gpt-4o-mini and $2.40 on gpt-3.5-turbo.
    assert estimated_cost(100_000, 3, load_table().resolve("gpt-4o-mini").price_per_1m) == pytest.approx(0.90)
    assert estimated_cost(100_000, 3, load_table().resolve("gpt-3.5-turbo").price_per_1m) == pytest.approx(
        2.40
    )
    assert estimated_cost(100_000, 3, None) is None
    assert billable_tokens([10, 500, 20], limit=100) == 130


def test_truncation_loss_counts_trained_tokens_past_the_limit() -> None:
    a = _accountant("gpt-4o-mini")
    ex = chat(("user", "question " * 20), ("assistant", "answer " * 30))
    tokens = a.chat(ex, detail=True)
    assert tokens.per_message is not None
    user, assistant = tokens.per_message
    limit = user.billed + 10  # only the assistant header and a few content tokens fit
    header = assistant.billed - assistant.trained
    assert truncation_loss(tokens, limit) == assistant.trained - (10 - header)
    assert truncation_loss(tokens, tokens.billed) == 0


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
        ("gpt-3.5-turbo", "gpt-3.5-turbo-0125"),
        ("gpt-4", "gpt-4-0613"),
        ("ft:gpt-4.1-mini-2025-04-14:acme:sales:abc123", "gpt-4.1-mini-2025-04-14"),
        ("ft:gpt-4o-mini:acme::xyz", "gpt-4o-mini-2024-07-18"),
        ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613"),
    ],
)
def test_model_names_resolve(name: str, base: str) -> None:
    info = load_table().resolve(name)
    assert info.name == base
    assert info.encoding == ("cl100k_base" if base.startswith(("gpt-3.5", "gpt-4-")) else "o200k_base")


def test_model_table_values() -> None:
    t = load_table()
    assert t.resolve("gpt-4.1-nano").max_tokens == 32768
    assert t.resolve("gpt-3.5-turbo-0613").max_tokens == 4096
    assert t.resolve("gpt-4o").price_per_1m == 25.0
    assert t.resolve("gpt-4").price_per_1m is None
    assert all(m.min_examples == 10 for m in t.models.values())
    with pytest.raises(ModelError, match="unknown model"):
        t.resolve("gpt-9")


def test_model_table_override(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models."gpt-4o-mini-2024-07-18"]\nencoding = "o200k_base"\nmax_tokens = 1000\nprice_per_1m = 1.0\n'
        '[models."my-model"]\nencoding = "cl100k_base"\nmax_tokens = 2048\nmin_examples = 50\naliases = ["mine"]\n'
    )
    t = load_table(path)
    assert t.resolve("gpt-4o-mini").max_tokens == 1000
    assert t.resolve("mine").min_examples == 50
    assert t.resolve("gpt-4o").max_tokens == 65536  # untouched entries stay
