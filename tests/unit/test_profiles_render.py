"""Rendering with a profile's template: the same text as transformers, refusals, runaway guards."""

from __future__ import annotations

import json
from typing import Any

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from service.core.profiles import TemplateRaised, profile_from_files, render_messages
from tests.unit.profile_fixtures import DEEPSEEK_JSON, profile

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "naïve 😀"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "done"},
    ],
    [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
        {"role": "assistant", "content": "It is 21 C."},
    ],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
NAMES = [
    "llama3_1",
    "qwen2_5",
    "qwen3",
    "deepseekv3",
    "gemma3",
    "gptoss",
    "qwen3_training",
    "gptoss_training",
]


def _reference(
    chat_template: str, msgs: list[dict[str, Any]], tools: Any, gen: bool, special: dict[str, str]
) -> tuple[str, list[tuple[int, int]]]:
    render: Any = render_jinja_template
    texts, spans = render(
        conversations=[msgs],
        tools=tools,
        chat_template=chat_template,
        add_generation_prompt=gen,
        return_assistant_tokens_mask=True,
        **special,
    )
    return str(texts[0]), [(int(a), int(b)) for a, b in spans[0]]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_render_equals_transformers(name: str, index: int, gen: bool) -> None:
    p = profile(name)
    msgs = CONVERSATIONS[index]
    tools = TOOLS if index == 2 else None
    error: str | None = None
    try:
        ref = _reference(p.chat_template, msgs, tools, gen, p.template_vars)
    except Exception as e:
        error = str(e)
    if error is not None:
        with pytest.raises(TemplateRaised) as info:
            render_messages(p, msgs, tools=tools, add_generation_prompt=gen)
        assert info.value.message in error
        return
    ours = render_messages(p, msgs, tools=tools, add_generation_prompt=gen)
    assert (ours.text, ours.generation_spans) == ref


def test_template_raise_is_template_raised_with_its_message() -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TemplateRaised) as info:
        render_messages(profile("gemma3"), msgs)
    assert "Conversation roles must alternate" in info.value.message


def _custom(text: str) -> Any:
    return profile_from_files(
        name="custom",
        tokenizer=DEEPSEEK_JSON.read_bytes(),
        tokenizer_filename="tokenizer.json",
        chat_template=text,
    )


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than"),
        ("{{ 'x' * 100000000 }}", "limit"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "limit",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "limit",
        ),
        ("{{ 'a'.center(100000000) }}", "limit"),
        ("{{ 10 ** 100000000 }}", "limit"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed"),
        ("{{ raise_exception('No user query found') }}", "No user query found"),
        ("{% set ns = namespace(_x=1) %}", "underscore"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{% set d = {} %}{{ d.update({'a': 1}) }}", "unsafe"),
    ],
)
def test_untrusted_templates_raise_template_raised(template: str, needle: str) -> None:
    with pytest.raises(TemplateRaised) as info:
        render_messages(_custom(template), [{"role": "user", "content": "hi"}])
    assert needle in info.value.message


def test_filters_and_globals_match_transformers() -> None:
    text = (
        "{{ {'é': [1, 2]} | tojson }}|{{ {'b': 1, 'a': 2} | tojson(indent=2, sort_keys=true) }}|"
        "{{ strftime_now('%Y') | length }}|{{ dict(a=1) | tojson }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}|"
        "{% generation %}{{ eos_token }}{% endgeneration %}"
    )
    p = _custom(text)
    msgs = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    ours = render_messages(p, msgs)
    assert (ours.text, ours.generation_spans) == _reference(text, msgs, None, False, p.template_vars)
    assert json.loads(ours.text.split("|")[0]) == {"é": [1, 2]}


def test_concurrent_renders_keep_their_own_generation_spans() -> None:
    from concurrent.futures import ThreadPoolExecutor

    p = profile("qwen3_training")
    conversations = [
        [{"role": "user", "content": "q" * i}, {"role": "assistant", "content": "a" * (i + 1)}]
        for i in range(1, 40)
    ]
    expected = [render_messages(p, c) for c in conversations]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda c: render_messages(p, c), conversations * 3))
    assert got == expected * 3
