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
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.core.conversation import ChatExample, text_of
from service.core.profiles import (
    CHECK_CASES,
    ModelProfile,
    TemplateRaised,
    TrainingRules,
    check_profile,
    expand_per_turn,
    load_hf_dir,
    profile_view,
    render_messages,
)
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
SAMPLE_EVERY = (
    20  # the fast tests take all of MT-Bench and every 20th ShareGPT conversation; the slow one the rest
)


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
    for name, example in data_sample(SAMPLE_EVERY).items():
        for variant in (example, with_system(example)) if name.startswith("mtbench") else (example,):
            try:
                check_against_reference(f, p, variant)
            except AssertionError as e:
                raise AssertionError(f"{f.label}, {name}: {e}") from e


@pytest.mark.slow
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_every_real_conversation_renders_and_tokenizes_like_transformers(key: str) -> None:
    f, p = fam(key), profile(key)
    sampled = data_sample(SAMPLE_EVERY)
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
    for name, example in data_sample(SAMPLE_EVERY).items():
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


END_TOKENS = ("<|return|>", "<|call|>")


def _without_eot(f: Family, ref: ReferenceMask, t: TurnSpan) -> TurnSpan:
    last = max(i for i, off in enumerate(ref.offsets) if _touches(off, t.core))
    a, b = ref.offsets[last]
    assert ref.text[a:b] in (*f.markers, *END_TOKENS), f"turn ends on {ref.text[a:b]!r}, not a marker"
    return TurnSpan(t.message_index, t.span, (t.core[0], a))


def _original_turns_have_think(original: str) -> list[bool]:
    """Qwen3's own template: which assistant turns it renders with a <think> block."""
    return [m.group(1) is not None for m in re.finditer(r"<\|im_start\|>assistant\n(<think>)?", original)]


def check_masks(f: Family, p: ModelProfile, example: ChatExample) -> list[int] | None:
    """tuneset's trained tokens against the training template's assistant_masks; returns the expected
    mask when compared by position, None when compared turn by turn.

    Each span is cut to its core by the family's MaskRule; under the profile's rules the cores of the
    trained messages (weight not 0, train_on) minus, with train_eot=False, their end-of-turn token, are
    what tuneset must train: every token touching them (a straddling token is trained), nothing else."""
    ref = reference_mask(f, example)
    original = reference_text(f, example)
    view = profile_view(p, example).view
    assert view is not None
    turns, extra = turn_spans(f, example, ref)
    trained = {
        t.message_index: (_without_eot(f, ref, t) if not p.rules.train_eot else t).core
        for t in turns
        if _is_trained(example, t.message_index, p.rules)
    }
    if ref.text == original:
        # Same text: compare position by position.
        assert view.token_ids() == ref.ids
        expected = [int(any(_touches(off, core) for core in trained.values())) for off in ref.offsets]
        documented = [*extra]  # where a rule says tuneset differs from the training template
        for t in turns:
            core = trained.get(t.message_index)
            if core is None:
                documented.append(t.span)  # weight 0 / train_on: the message is not trained
            else:
                documented += [(t.span[0], core[0]), (core[1], t.span[1])]
        for i, (ours, theirs) in enumerate(zip(expected, ref.mask, strict=True)):
            if ours != theirs:  # every difference is one the rules explain, and only there
                assert theirs == 1, f"token {i} trained by tuneset's rule, not by the training template"
                assert any(_touches(ref.offsets[i], d) for d in documented), (
                    f"token {i} {ref.text[slice(*ref.offsets[i])]!r}: undocumented difference"
                )
        mask = view.labels_mask()
        wrong = [i for i, (a, b) in enumerate(zip(mask, expected, strict=True)) if a != b]
        assert not wrong, [
            (i, ref.text[slice(*ref.offsets[i])], "tuneset trains" if mask[i] else "tuneset skips")
            for i in wrong
        ]
        return expected
    # Different texts (Llama 3.1 vs llama3_training; Qwen3's history): compare turn by turn.
    think = _original_turns_have_think(original) if f.key == "qwen3" else []
    by_message = _trained_by_message(view)
    for j, t in enumerate(turns):
        m = example.messages[t.message_index]
        if f.key == "llama3_1" and m.tool_calls:
            continue  # llama3_training has no tool-call branch (see MASK_RULES)
        if f.key == "qwen3" and not think[j] and text_of(m).startswith("\n"):
            continue  # the training template writes content.lstrip("\n") here, the model's template the content
        want: list[int] = []
        if t.message_index in trained:
            core = trained[t.message_index]
            if f.key == "qwen3" and not think[j] and (hit := QWEN3_THINK.match(ref.text, core[0], core[1])):
                core = (hit.end(), core[1])  # the model's template renders no <think> block here
            want = [ref.ids[i] for i, off in enumerate(ref.offsets) if _touches(off, core)]
        got = by_message.get(t.message_index, [])
        assert got == want, (
            f"message {t.message_index}: tuneset trains {p.tokenizer.decode(got)!r}, "
            f"the training template {p.tokenizer.decode(want)!r}"
        )
    assert set(by_message) <= set(trained), f"messages {set(by_message) - set(trained)} trained"
    return None


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
    for name, example in data_sample(SAMPLE_EVERY).items():
        for variant in (example, with_system(example)) if name.startswith("mtbench") else (example,):
            try:
                check_masks(f, p, variant)
            except AssertionError as e:
                raise AssertionError(f"{f.label}, {name}: {e}") from e


RULE_CASES = [
    "plain",
    "multi_turn",
    "weight_zero_turn",
    "consecutive_assistant_last",
    "tool_calls",
    "empty_assistant",
]


@pytest.mark.parametrize("rules", [{"train_eot": False}, {"train_on": "last"}], ids=["no_eot", "last"])
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_training_rules_move_the_masks_exactly(key: str, rules: dict[str, Any]) -> None:
    """train_eot=False leaves out exactly each turn's end-of-turn token; train_on="last" trains only
    the last assistant message (and weight 0 still wins)."""
    f = fam(key)
    p = profile(key).with_rules(**rules)
    assert p.content_hash != profile(key).content_hash
    for case in RULE_CASES:
        if reference_error(f, IRREGULAR[case]) is None:
            check_masks(f, p, IRREGULAR[case])


def generation_profile(f: Family) -> ModelProfile:
    """The family's profile on TRL's training template, with masks from its {% generation %} blocks."""
    from service.core.profiles import profile_from_files

    return profile_from_files(
        name=f"{f.key}-training",
        tokenizer=f.tokenizer_bytes(),
        tokenizer_filename=f.tokenizer_filename,
        chat_template=f.training_template,
        tokenizer_config=f.tokenizer_config(),
        tiktoken_preset=f.tiktoken_preset,
        rules=TrainingRules(mask_source="generation"),
    )


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_generation_mask_source_equals_transformers_assistant_masks(key: str) -> None:
    """With mask_source="generation" on a template that has {% generation %} blocks, the trained tokens
    are transformers' assistant_masks, except the spans of weight-0 messages (weight 0 always wins)."""
    f = fam(key)
    p = generation_profile(f)
    real = dict(list(data_sample(SAMPLE_EVERY).items())[::6])
    for case, example in {**IRREGULAR, **real}.items():
        try:
            ref = reference_mask(f, example)
        except Exception:
            continue  # the training template refuses it too: the reject tests cover refusals
        view = profile_view(p, example).view
        assert view is not None, case
        assert view.token_ids() == ref.ids, case
        turns, extra = turn_spans(f, example, ref)
        # Documented (profile_view: blocks count "inside the trained messages"): weight 0 wins, and a
        # block that belongs to no message (Phi's eos after the final turn) is not trained.
        muted = [t.span for t in turns if example.messages[t.message_index].weight == 0] + extra
        expected = [
            0 if any(_touches(off, s) for s in muted) else m
            for m, off in zip(ref.mask, ref.offsets, strict=True)
        ]
        assert view.labels_mask() == expected, case


# ---------------------------------------------------------------- findings, decided by the reference


def _findings(key: str, example: ChatExample, code: str) -> set[int | None]:
    return {x.message_index for x in profile_view(profile(key), example).findings if x.code == code}


def _argument_forms(arguments: Any) -> list[str]:
    if isinstance(arguments, str):
        return [arguments]
    return [json.dumps(arguments), json.dumps(arguments, ensure_ascii=False)]


def dropped_by_reference(f: Family, example: ChatExample) -> set[int | None]:
    """Messages whose text (stripped, or JSON-escaped) or a tool call (name and arguments) is absent from
    transformers' rendering: what the template drops. (Text moved elsewhere, like DeepSeek-V3 gathering
    every system message at the top, is not dropped.)"""
    text = reference_text(f, example)
    out: set[int | None] = set()
    for i, m in enumerate(template_messages(example)):
        content = (m.get("content") or "").strip()
        # a tool result may be written as a JSON string (Llama 3.1, gpt-oss: `content | tojson`)
        if content and content not in text and json.dumps(content)[1:-1] not in text:
            out.add(i)
        for call in m.get("tool_calls") or []:
            fn = call["function"]
            if fn["name"] not in text or not any(a in text for a in _argument_forms(fn["arguments"])):
                out.add(i)
    return out


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_dropped_content_is_reported_exactly_where_transformers_drops_it(key: str) -> None:
    f = fam(key)
    for case, example in IRREGULAR.items():
        if reference_error(f, example) is not None:
            continue
        # A whitespace-only message that a template trims away (Llama, Gemma) may be reported or not:
        # "dropped" is a matter of taste there, so those messages are left out of the comparison.
        blank = {i for i, m in enumerate(example.messages) if text_of(m) and not text_of(m).strip()}
        found = _findings(key, example, "template_drops_content") - blank
        assert found == dropped_by_reference(f, example) - blank, case


def _end_of_last_turn(f: Family, text: str) -> int:
    """Where the last message's end-of-turn marker ends in a render (its last end marker)."""
    return max(text.rfind(m) + len(m) for m in (f.eot, *END_TOKENS) if m in text)


def rewritten_by_reference(f: Family, example: ChatExample) -> set[int | None]:
    """Trained assistant turns that, rendered by transformers as the conversation's last turn, read
    differently (up to their own end-of-turn marker) from the same turn in the whole conversation."""
    whole = reference_text(f, example)
    last_assistant = max((i for i, m in enumerate(example.messages) if m.role == "assistant"), default=-1)
    out: set[int | None] = set()
    for k, m in enumerate(example.messages):
        if m.role != "assistant" or m.weight == 0 or k == len(example.messages) - 1 or k > last_assistant:
            continue
        prefix = ChatExample(messages=example.messages[: k + 1], tools=example.tools)
        if reference_error(f, prefix) is not None:
            continue
        part = reference_text(f, prefix)
        if not whole.startswith(part[: _end_of_last_turn(f, part)]):
            out.add(k)
    return out


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_rewritten_history_is_reported_exactly_where_transformers_rewrites_it(key: str) -> None:
    """Qwen3 (the empty <think> block only on the last turn) and gpt-oss (<|return|> on the last turn,
    <|end|> before) rewrite earlier turns; the others do not. A difference after a turn's end-of-turn
    marker (Phi's eos after the final message) changes nothing that turn trains on, so it is no rewrite."""
    f = fam(key)
    found_any = False
    for case, example in IRREGULAR.items():
        if reference_error(f, example) is not None:
            continue
        expected = rewritten_by_reference(f, example)
        found_any |= bool(expected)
        assert _findings(key, example, "template_rewrites_history") == expected, case
    assert found_any == (key in ("qwen3", "gptoss"))


INJECTED = [
    ("llama3_1", "plain", "Cutting Knowledge Date: December 2023"),
    ("llama3_1", "no_system", "Today Date: 26 Jul 2024"),
    ("qwen2_5", "no_system", "You are Qwen, created by Alibaba Cloud."),
    ("gptoss", "plain", "You are ChatGPT, a large language model trained by OpenAI."),
]


@pytest.mark.parametrize(("key", "case", "quote"), INJECTED)
def test_text_the_template_writes_on_its_own_is_reported(key: str, case: str, quote: str) -> None:
    example = IRREGULAR[case]
    assert quote in reference_text(fam(key), example)
    assert not any(quote in text_of(m) for m in example.messages)
    found = [x for x in profile_view(profile(key), example).findings if x.code == "template_injects_text"]
    assert any(quote[:40] in x.message for x in found), found


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_untrained_end_of_turn_is_reported(key: str) -> None:
    example = IRREGULAR["multi_turn"]
    assert not _findings(key, example, "eot_not_trained")
    p = profile(key).with_rules(train_eot=False)
    assert {x.code for x in profile_view(p, example).findings} >= {"eot_not_trained"}


# ---------------------------------------------------------------- per-turn expansion, templates check, HF folders


PER_TURN_CASES = [
    "multi_turn",
    "consecutive_assistant_last",
    "weight_zero_turn",
    "assistant_first",
    "tool_calls",
]


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_expand_per_turn_trains_each_turn_as_inference_renders_it(key: str) -> None:
    """Each expanded example renders and tokenizes as transformers renders that prefix, trains its last
    turn exactly as the training template does, and nothing in it is rewritten any more."""
    f, p = fam(key), profile(key)
    for case in PER_TURN_CASES:
        example = IRREGULAR[case]
        if reference_error(f, example) is not None:
            continue
        expanded = expand_per_turn(example)
        trained = [i for i, m in enumerate(example.messages) if m.role == "assistant" and m.weight != 0]
        assert [len(e.messages) - 1 for e in expanded] == trained, case
        for e in expanded:
            check_against_reference(f, p, e)
            check_masks(f, p, e)
            assert not _findings(key, e, "template_rewrites_history"), case


def _runs(text: str, offsets: list[tuple[int, int]], mask: list[int]) -> list[str]:
    runs: list[str] = []
    current: list[str] = []
    for (a, b), m in zip(offsets, mask, strict=True):
        if m:
            current.append(text[a:b])
        elif current:
            runs.append("".join(current))
            current = []
    if current:
        runs.append("".join(current))
    return runs


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_templates_check_answers_what_transformers_does(key: str) -> None:
    """`tuneset templates check`'s rows: rejected exactly where transformers raises, rewritten exactly
    where it renders a turn differently as the last one, and the trained text the training template's
    masks give (cut by MASK_RULES)."""
    f, p = fam(key), profile(key)
    rows = {row.case: row for row in check_profile(p)}
    assert set(rows) == set(CHECK_CASES)
    for case, example in CHECK_CASES.items():
        row = rows[case]
        if reference_error(f, example) is not None:
            assert row.outcome == "rejected", case
            continue
        assert row.outcome == ("rewritten" if rewritten_by_reference(f, example) else "rendered"), case
        expected = check_masks(f, p, example)
        if expected is not None:
            ref = reference_mask(f, example)
            runs = _runs(ref.text, ref.offsets, expected)
            assert row.trained == (" | ".join(repr(r) for r in runs) or "(nothing)"), case


def _hf_folder(f: Family, root: Path, *, template_file: bool) -> Path:
    """A model folder as a self-hosting team has it: tokenizer.json, tokenizer_config.json with bos/eos
    and the chat template (or the template in chat_template.jinja)."""
    folder = root / f.key / ("jinja" if template_file else "config")
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes(f.tokenizer_bytes())
    config = json.loads(f.tokenizer_config())
    if template_file:
        (folder / "chat_template.jinja").write_text(f.template)
    else:
        config["chat_template"] = f.template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("template_file", [False, True], ids=["config", "jinja"])
@pytest.mark.parametrize("key", [k for k in FAMILY_KEYS if fam(k).kind == "hf"])
def test_hf_model_folder_gives_the_same_profile(key: str, template_file: bool, tmp_path: Path) -> None:
    f = fam(key)
    p = load_hf_dir(_hf_folder(f, tmp_path, template_file=template_file), name=key)
    assert p.tokenizer_sha256 == profile(key).tokenizer_sha256
    assert p.template_sha256 == profile(key).template_sha256
    assert (p.bos_token, p.eos_token) == (f.bos_token, f.eos_token)
    for case in ("plain", "multi_turn", "other_family_markers", "trailing_user"):
        check_against_reference(f, p, IRREGULAR[case])


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_each_message_text_is_attributed_to_its_own_message(key: str) -> None:
    """Wherever transformers renders a message's text, the segments tuneset gives that message hold it
    (so its mask and its findings are about the right characters)."""
    f, p = fam(key), profile(key)
    for case, example in {**IRREGULAR, **data_sample(SAMPLE_EVERY)}.items():
        if reference_error(f, example) is not None:
            continue
        view = profile_view(p, example).view
        assert view is not None
        dropped = dropped_by_reference(f, example)
        for i, m in enumerate(example.messages):
            text = text_of(m).strip()
            if not text or i in dropped:
                continue
            own = "".join(s.text for s in view.segments if s.message_index == i)
            assert text in own or json.dumps(text)[1:-1] in own, (
                f"{case}: message {i} ({m.role}) {text[:60]!r} is not in its segments {own[:120]!r}"
            )


@pytest.mark.parametrize("key", [k for k in FAMILY_KEYS if fam(k).kind == "tiktoken"])
def test_rank_file_with_only_a_preset_gives_the_same_profile(key: str) -> None:
    """`--tokenizer tokenizer.model --chat-template T --tiktoken-preset P` with no tokenizer_config: the
    preset alone supplies the special tokens and bos/eos the model's own tokenizer_config has."""
    from service.core.profiles import profile_from_files

    f = fam(key)
    p = profile_from_files(
        name=key,
        tokenizer=f.tokenizer_bytes(),
        tokenizer_filename=f.tokenizer_filename,
        chat_template=f.template,
        tiktoken_preset=f.tiktoken_preset,
    )
    assert (p.bos_token, p.eos_token) == (f.bos_token, f.eos_token)
    for case in ("plain", "multi_turn", "tool_calls", "other_family_markers", "reasoning_in_content"):
        check_against_reference(f, p, IRREGULAR[case])
