"""Model profiles against the references, for seven real model families (tests/profile_refs.py).

For every family and conversation (the real ones of tests/data and the irregular ones):
- the rendered text equals transformers' `apply_chat_template(tokenize=False)`, also with
  `add_generation_prompt` and with tools;
- the token ids equal the family's own tokenizer on that text;
- a template that raises in transformers gives `template_rejects_conversation` with the same message;
- the trained tokens equal transformers' `assistant_masks` under TRL's `*_training.jinja` template,
  except where a documented rule (MASK_RULES below) says why, and then exactly there;
- gpt-oss's tokens equal openai-harmony's rendering where the two describe the same conversation.
"""

from __future__ import annotations

import datetime
import importlib
import re
from dataclasses import dataclass
from typing import Any

import pytest
from service.core.profiles import ModelProfile, TemplateRaised, TrainingRules, profile_view, render_messages

from service.core.conversation import ChatExample, text_of
from service.core.view import TrainingView
from tests.profile_refs import (
    FAMILY_KEYS,
    Family,
    ReferenceMask,
    data_conversations,
    data_sample,
    families,
    harmony_encoding,
    irregular_conversations,
    profile,
    reference_error,
    reference_exception,
    reference_ids,
    reference_mask,
    reference_text,
    reference_tokenizer,
    template_messages,
    template_tools,
    with_system,
)

IRREGULAR = irregular_conversations()


def fam(key: str) -> Family:
    return families()[key]


# ---------------------------------------------------------------- the references themselves


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_reference_tokenizer_encodes_every_template_marker_as_one_token(key: str) -> None:
    f = fam(key)
    tok = reference_tokenizer(f)
    p = profile(key)
    for marker in f.markers:
        ids = reference_ids(f, marker)
        assert len(ids) == 1, f"{f.label}: {marker!r} is {ids} in the reference tokenizer"
        assert tok.backend_tokenizer.encode(marker, add_special_tokens=False).ids == ids
        assert f.eot in f.markers
        assert p.tokenizer.token_to_id(marker) == ids[0], f"{f.label}: tuneset's id for {marker!r}"
        assert p.tokenizer.encode(marker)[0] == ids


@pytest.mark.parametrize("key", [k for k in FAMILY_KEYS if fam(k).kind == "tiktoken"])
def test_converted_rank_tokenizer_agrees_with_the_package_tokenizer(key: str) -> None:
    """The transformers tokenizer used for masks (TikTokenConverter) encodes like the package's own."""
    f = fam(key)
    tok = reference_tokenizer(f)
    for name, example in {**IRREGULAR, **data_sample(25)}.items():
        if reference_error(f, example) is not None:
            continue
        text = reference_text(f, example)
        assert tok.backend_tokenizer.encode(text, add_special_tokens=False).ids == reference_ids(f, text), (
            name
        )


# ---------------------------------------------------------------- rendering and ids


def _rejection(p: ModelProfile, example: ChatExample) -> str:
    result = profile_view(p, example)
    assert result.view is None
    rejects = [x for x in result.findings if x.code == "template_rejects_conversation"]
    assert rejects, result.findings
    return rejects[0].message


def same_error(tuneset_message: str, reference: Exception) -> bool:
    """tuneset's TemplateRaised message is transformers' message: exactly, or (for a Python error the
    template hit, not its own raise_exception) prefixed by the error's type, as a traceback shows it."""
    import jinja2

    text = str(reference)
    if type(reference) is jinja2.exceptions.TemplateError:  # raise_exception(...): the template's words
        return tuneset_message == text
    return tuneset_message in (text, f"{type(reference).__name__}: {text}")


def check_against_reference(f: Family, p: ModelProfile, example: ChatExample) -> None:
    """Text, ids and refusals of one conversation, as the issue's acceptance states them."""
    error = reference_exception(f, example)
    if error is not None:
        message = _rejection(p, example)
        assert str(error) in message, f"transformers raised {error!r}; tuneset said {message!r}"
        with pytest.raises(TemplateRaised) as raised:
            render_messages(p, template_messages(example), tools=template_tools(example))
        assert same_error(raised.value.message, error), (raised.value.message, error)
        return
    expected = reference_text(f, example)
    result = profile_view(p, example)
    assert result.rendered == expected
    view = result.view
    assert view is not None, result.findings
    ids = view.token_ids()
    assert ids == reference_ids(f, expected)
    assert ids == p.tokenizer.encode(expected)[0]
    assert "".join(s.text for s in view.segments) == expected
    assert view.total_tokens == len(ids)
    assert view.billed_tokens == view.total_tokens
    assert view.trained_tokens == sum(view.labels_mask())
    assert view.target == p.name
    assert view.encoding == f"{p.tokenizer.kind}:{p.tokenizer_sha256[:12]}"


@pytest.mark.parametrize("case", sorted(IRREGULAR))
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_irregular_conversation_renders_and_tokenizes_like_transformers(key: str, case: str) -> None:
    check_against_reference(fam(key), profile(key), IRREGULAR[case])


@pytest.mark.parametrize("case", sorted(IRREGULAR))
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_generation_prompt_renders_like_transformers(key: str, case: str) -> None:
    f, p, example = fam(key), profile(key), IRREGULAR[case]
    error = reference_exception(f, example, add_generation_prompt=True)
    messages, tools = template_messages(example), template_tools(example)
    if error is not None:
        with pytest.raises(TemplateRaised) as raised:
            render_messages(p, messages, tools=tools, add_generation_prompt=True)
        assert same_error(raised.value.message, error), (raised.value.message, error)
        return
    rendered = render_messages(p, messages, tools=tools, add_generation_prompt=True)
    assert rendered.text == reference_text(f, example, add_generation_prompt=True)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_tools_are_rendered_like_transformers_even_without_tool_calls(key: str) -> None:
    """The tools list alone changes what most templates render (a tools system block)."""
    from tests.profile_refs import WEATHER_TOOL

    f, p = fam(key), profile(key)
    for case in ("plain", "no_system", "multi_turn", "trailing_user"):
        example = IRREGULAR[case]
        with_tools = ChatExample(messages=example.messages, tools=IRREGULAR["tool_calls"].tools)
        assert with_tools.tools is not None
        assert template_tools(with_tools) == [WEATHER_TOOL]
        check_against_reference(f, p, with_tools)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_real_conversations_render_and_tokenize_like_transformers(key: str) -> None:
    """MT-Bench and a sample of ShareGPT, with and without a system prompt."""
    f, p = fam(key), profile(key)
    for name, example in data_sample(10).items():
        for variant in (example, with_system(example)):
            try:
                check_against_reference(f, p, variant)
            except AssertionError as e:
                raise AssertionError(f"{f.label}, {name}: {e}") from e


@pytest.mark.slow
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_every_real_conversation_renders_and_tokenizes_like_transformers(key: str) -> None:
    f, p = fam(key), profile(key)
    sampled = data_sample(10)
    for name, example in data_conversations().items():
        if name in sampled:
            continue
        try:
            check_against_reference(f, p, example)
        except AssertionError as e:
            raise AssertionError(f"{f.label}, {name}: {e}") from e


# ---------------------------------------------------------------- gpt-oss against openai-harmony


def _harmony_tokens(example: ChatExample, *, developer_suffix: str) -> list[int]:
    """openai-harmony's training rendering of a conversation without tool calls."""
    oh: Any = importlib.import_module("openai_harmony")
    system = oh.SystemContent.new().with_conversation_start_date(datetime.date.today().isoformat())
    messages: list[Any] = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    for i, m in enumerate(example.messages):
        text = text_of(m)
        if m.role == "system" and i == 0:
            content = oh.DeveloperContent.new().with_instructions(text + developer_suffix)
            messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, content))
        elif m.role == "user":
            messages.append(oh.Message.from_role_and_content(oh.Role.USER, text))
        elif m.role == "assistant":
            messages.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel("final"))
        else:
            raise AssertionError(f"no harmony equivalent for {m.role} at {i}")
    tokens: list[int] = harmony_encoding().render_conversation_for_training(
        oh.Conversation.from_messages(messages)
    )
    return tokens


HARMONY_CASES = [
    "plain",
    "no_system",
    "multi_turn",
    "weight_zero_turn",
    "unicode",
    "whitespace_edges",
    "empty_assistant",
    "long_numbers_code",
    "assistant_first",
]


@pytest.mark.parametrize("case", HARMONY_CASES)
def test_gptoss_tokens_equal_openai_harmony(case: str) -> None:
    """gpt-oss's HF template and openai-harmony agree token for token, except one documented point:
    the HF template ends the developer message's instructions with "\\n\\n", harmony does not. So the
    comparison gives harmony the instructions followed by "\\n\\n" when there is a system message."""
    example = IRREGULAR[case]
    view = profile_view(profile("gptoss"), example).view
    assert view is not None
    has_system = example.messages[0].role == "system"
    assert view.token_ids() == _harmony_tokens(example, developer_suffix="\n\n" if has_system else "")
    if has_system:  # and the difference is exactly that suffix
        assert view.token_ids() != _harmony_tokens(example, developer_suffix="")


def test_gptoss_real_conversations_equal_openai_harmony() -> None:
    for name, example in data_sample(10).items():
        view = profile_view(profile("gptoss"), example).view
        assert view is not None
        assert view.token_ids() == _harmony_tokens(example, developer_suffix=""), name


# ---------------------------------------------------------------- masks against the training templates


@dataclass(frozen=True)
class MaskRule:
    """Where tuneset's trained tokens differ from a `*_training.jinja` template's {% generation %}
    spans, and why. `prefix`/`suffix` match template text at the start/end of a span that the training
    template trains and tuneset does not; `extra_span` matches whole spans that belong to no message."""

    why: str
    prefix: str = ""
    suffix: str = ""
    extra_span: str | None = None


# tuneset's span rule (service/core/profiles/profile_view.py): a trained message's output runs from
# where the generation prompt (what add_generation_prompt appends) ends to its end-of-turn token
# inclusive; the generation prompt itself, text after the end-of-turn token and text outside any
# message are never trained; weight 0 always wins.
MASK_RULES: dict[str, MaskRule] = {
    "llama3_1": MaskRule(
        "TRL has no llama3_1_training; llama3_training (for the plain Llama 3 template) trains the trimmed "
        "content and <|eot_id|>, exactly tuneset's rule. It renders no system/date header, so turns are "
        "compared one by one, not by position; its tool-call turns render no call (it has no branch "
        "for them), so those turns are not compared"
    ),
    "qwen2_5": MaskRule(
        "the span starts at the \\n that ends the <|im_start|>assistant\\n generation prompt and ends on "
        "the \\n after <|im_end|>; tuneset trains neither (inference writes the prompt; the \\n is "
        "between turns)",
        prefix=r"\n",
        suffix=r"(?<=<\|im_end\|>)\n",
    ),
    "qwen3": MaskRule(
        "the span ends on the \\n after <|im_end|>, which tuneset does not train; TRL's training template "
        "also renders the empty <think> block on every turn (its prefix-preservation patch), the model's "
        "template only after the last user message: turns rendered without it are compared one by one",
        suffix=r"(?<=<\|im_end\|>)\n",
    ),
    "gemma3": MaskRule(
        "the span ends on the \\n after <end_of_turn>, which tuneset does not train",
        suffix=r"(?<=<end_of_turn>)\n",
    ),
    "deepseekv3": MaskRule(
        "the span starts with the <｜Assistant｜> header (or <｜tool▁outputs▁end｜> after tool output), "
        "template text that inference writes as the generation prompt; tuneset does not train it",
        prefix=r"<｜Assistant｜>|<｜tool▁outputs▁end｜>",
    ),
    "phi3_5": MaskRule(
        "the span ends on the \\n after <|end|>, and the template trains the <|endoftext|> eos it appends "
        "after a final assistant turn; tuneset trains <|end|>, the turn's end-of-turn token, and neither",
        suffix=r"(?<=<\|end\|>)\n",
        extra_span=r"<\|endoftext\|>",
    ),
    "gptoss": MaskRule(
        "the span starts with <|start|>assistant, the generation prompt inference writes; tuneset trains "
        "from after it (the channel header the model writes, the content, <|end|>/<|return|>/<|call|>)",
        prefix=r"<\|start\|>assistant",
    ),
}


QWEN3_THINK = re.compile(r"<think>\n.*?\n?</think>\n\n", re.DOTALL)


@dataclass
class TurnSpan:
    message_index: int
    span: tuple[int, int]  # the {% generation %} span
    core: tuple[int, int]  # the span minus the documented prefix/suffix: what tuneset must train


def turn_spans(
    f: Family, example: ChatExample, ref: ReferenceMask
) -> tuple[list[TurnSpan], list[tuple[int, int]]]:
    """The training template's spans, one per assistant message in order, each cut to its core; and the
    spans that belong to no message."""
    rule = MASK_RULES[f.key]
    extra = [s for s in ref.spans if rule.extra_span and re.fullmatch(rule.extra_span, ref.text[s[0] : s[1]])]
    spans = [s for s in ref.spans if s not in extra]
    assistants = [i for i, m in enumerate(example.messages) if m.role == "assistant"]
    assert len(spans) == len(assistants), f"{len(spans)} generation spans for assistants {assistants}"
    out = []
    for i, (a, b) in zip(assistants, spans, strict=True):
        start, end = a, b
        if rule.prefix and (pre := re.match(rule.prefix, ref.text[a:b])):
            start += pre.end()
        if rule.suffix and (suf := re.search(f"(?:{rule.suffix})$", ref.text[start:b])):
            end = start + suf.start()
        out.append(TurnSpan(i, (a, b), (start, end)))
    return out, extra


def _touches(offsets: tuple[int, int], span: tuple[int, int]) -> bool:
    return offsets[0] < span[1] and span[0] < offsets[1]


def _inside(offsets: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    """Every character of the token lies in one of `spans`."""
    return all(any(a <= c < b for a, b in spans) for c in range(offsets[0], offsets[1]))


def _trained_by_message(view: TrainingView) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for s in view.segments:
        if s.trained:
            assert s.message_index is not None
            out.setdefault(s.message_index, []).extend(s.token_ids)
    return out


def _is_trained(example: ChatExample, index: int, rules: TrainingRules) -> bool:
    m = example.messages[index]
    if m.role != "assistant" or m.weight == 0:
        return False
    if rules.train_on == "last":
        return index == max(i for i, x in enumerate(example.messages) if x.role == "assistant")
    return True


def _original_turns_have_think(original: str) -> list[bool]:
    """Qwen3's own template: which assistant turns it renders with a <think> block."""
    return [m.group(1) is not None for m in re.finditer(r"<\|im_start\|>assistant\n(<think>)?", original)]


def check_masks(f: Family, p: ModelProfile, example: ChatExample) -> str:
    """tuneset's trained tokens against the training template's assistant_masks; returns how compared."""
    ref = reference_mask(f, example)
    original = reference_text(f, example)
    view = profile_view(p, example).view
    assert view is not None
    turns, extra = turn_spans(f, example, ref)
    trained = [t for t in turns if _is_trained(example, t.message_index, p.rules)]
    if ref.text == original:
        # Same text: compare position by position.
        assert view.token_ids() == ref.ids
        expected = [int(any(_touches(off, t.core) for t in trained)) for off in ref.offsets]
        documented = [s for t in turns for s in ((t.span[0], t.core[0]), (t.core[1], t.span[1]))] + extra
        documented += [t.span for t in turns if t not in trained]
        for i, (want, theirs) in enumerate(zip(expected, ref.mask, strict=True)):
            if want != theirs:  # every difference is one the rules above explain
                assert theirs == 1, f"token {i} trained by tuneset's rule, not by the training template"
                assert _inside(ref.offsets[i], documented), (
                    f"token {i} {ref.text[slice(*ref.offsets[i])]!r}: undocumented difference"
                )
        got = view.labels_mask()
        wrong = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
        assert not wrong, [
            (i, ref.text[slice(*ref.offsets[i])], "tuneset trains" if got[i] else "tuneset skips")
            for i in wrong
        ]
        return "by position"
    # Different texts (Llama 3.1 vs llama3_training; Qwen3's history): compare turn by turn.
    think = _original_turns_have_think(original) if f.key == "qwen3" else []
    by_message = _trained_by_message(view)
    for j, t in enumerate(turns):
        m = example.messages[t.message_index]
        if f.key == "llama3_1" and m.tool_calls:
            continue  # llama3_training has no tool-call branch (see MASK_RULES)
        core = t.core
        if f.key == "qwen3" and not think[j] and (hit := QWEN3_THINK.match(ref.text, core[0], core[1])):
            core = (hit.end(), core[1])
        want = (
            [ref.ids[i] for i, off in enumerate(ref.offsets) if _touches(off, core)] if t in trained else []
        )
        assert by_message.get(t.message_index, []) == want, (
            f"message {t.message_index}: tuneset trains {p.tokenizer.decode(by_message.get(t.message_index, []))!r}"
            f", the training template {p.tokenizer.decode(want)!r}"
        )
    untrained_messages = set(by_message) - {t.message_index for t in trained}
    assert not untrained_messages, f"messages {untrained_messages} trained"
    return "turn by turn"


def _mask_cases(f: Family) -> dict[str, ChatExample]:
    return {k: v for k, v in IRREGULAR.items() if reference_error(f, v) is None}


@pytest.mark.parametrize("case", sorted(IRREGULAR))
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_trained_tokens_equal_the_training_templates_masks(key: str, case: str) -> None:
    f, example = fam(key), IRREGULAR[case]
    if reference_error(f, example) is not None:
        return  # the model's template refuses it: test_irregular_conversation_... checks the refusal
    check_masks(f, profile(key), example)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_trained_tokens_of_real_conversations_equal_the_training_templates_masks(key: str) -> None:
    f, p = fam(key), profile(key)
    for name, example in data_sample(10).items():
        for variant in (example, with_system(example)):
            try:
                check_masks(f, p, variant)
            except AssertionError as e:
                raise AssertionError(f"{f.label}, {name}: {e}") from e
