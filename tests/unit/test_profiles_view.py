"""profile_view on real templates: exact token ids, masks from spans, findings, per-turn expansion."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.core.conversation import ChatExample
from service.core.profiles import CHECK_CASES, check_profile, expand_per_turn, profile_view
from service.core.profiles.rendering import template_messages
from tests.unit.profile_fixtures import profile

NAMES = ["llama3_1", "qwen2_5", "qwen3", "deepseekv3", "gemma3", "gptoss", "phi3_5"]


def _ex(*messages: dict[str, Any], **extra: Any) -> ChatExample:
    return msgspec.convert({"messages": list(messages), **extra}, ChatExample)


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello there"}
U2 = {"role": "user", "content": "again"}
A2 = {"role": "assistant", "content": "sure"}


def _trained_text(view: Any) -> list[str]:
    runs: list[str] = []
    current = ""
    for seg in view.segments:
        if seg.trained:
            current += seg.text
        elif current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(CHECK_CASES))
def test_segments_are_the_tokenization_of_the_render(name: str, case: str) -> None:
    p = profile(name)
    result = profile_view(p, CHECK_CASES[case])
    if result.view is None:
        assert result.findings[0].code == "template_rejects_conversation"
        return
    assert result.rendered is not None
    ids, _ = p.tokenizer.encode(result.rendered)
    assert result.view.token_ids() == ids
    assert "".join(s.text for s in result.view.segments) == result.rendered
    assert result.view.total_tokens == result.view.billed_tokens == len(ids)
    assert result.view.encoding == f"{p.tokenizer.kind}:{p.tokenizer_sha256[:12]}"
    for seg in result.view.segments:
        if seg.trained:
            assert seg.role == "assistant"


def test_llama3_trains_content_and_eot() -> None:
    result = profile_view(profile("llama3_1"), _ex(U, A, U2, A2))
    assert result.view is not None
    assert _trained_text(result.view) == ["hello there<|eot_id|>", "sure<|eot_id|>"]
    codes = [f.code for f in result.findings]
    assert codes == ["template_injects_text"]
    assert "Cutting Knowledge Date" in result.findings[0].message


def test_rules_train_on_last_and_no_eot() -> None:
    p = profile("llama3_1").with_rules(train_on="last", train_eot=False)
    result = profile_view(p, _ex(U, A, U2, A2))
    assert result.view is not None
    assert _trained_text(result.view) == ["sure"]
    assert [f.message_index for f in result.findings if f.code == "eot_not_trained"] == [3]


def test_weight_zero_is_not_trained() -> None:
    result = profile_view(profile("qwen2_5"), _ex(U, {**A, "weight": 0}, U2, A2))
    assert result.view is not None
    assert _trained_text(result.view) == ["sure<|im_end|>"]


def test_qwen_default_system_prompt_is_injected_text() -> None:
    result = profile_view(profile("qwen2_5"), _ex(U, A))
    injected = [f for f in result.findings if f.code == "template_injects_text"]
    assert injected
    assert "You are Qwen, created by Alibaba Cloud" in injected[0].message


def test_qwen3_rewrites_history_and_per_turn_fixes_it() -> None:
    p = profile("qwen3")
    ex = _ex(U, A, U2, A2)
    result = profile_view(p, ex)
    assert result.view is not None
    rewrites = [f for f in result.findings if f.code == "template_rewrites_history"]
    assert [f.message_index for f in rewrites] == [1]
    assert _trained_text(result.view) == ["hello there<|im_end|>", "<think>\n\n</think>\n\nsure<|im_end|>"]
    parts = expand_per_turn(ex)
    assert len(parts) == 2
    for part in parts:
        r = profile_view(p, part)
        assert r.view is not None
        assert not [f for f in r.findings if f.code == "template_rewrites_history"]
        assert len(_trained_text(r.view)) == 1
    assert _trained_text(profile_view(p, parts[0]).view) == ["<think>\n\n</think>\n\nhello there<|im_end|>"]


def test_gptoss_end_versus_return_is_a_rewrite() -> None:
    result = profile_view(profile("gptoss"), _ex(U, A, U2, A2))
    assert result.view is not None
    assert _trained_text(result.view) == [
        "<|channel|>final<|message|>hello there<|end|>",
        "<|channel|>final<|message|>sure<|return|>",
    ]
    rewrite = next(f for f in result.findings if f.code == "template_rewrites_history")
    assert rewrite.message_index == 1
    assert "<|return|>" in rewrite.message


def test_gemma_rejects_consecutive_assistant_naming_the_message() -> None:
    result = profile_view(profile("gemma3"), _ex(U, A, A2))
    assert result.view is None
    assert result.rendered is None
    (finding,) = result.findings
    assert finding.code == "template_rejects_conversation"
    assert finding.message_index == 2
    assert "Conversation roles must alternate" in finding.message


def test_dropped_content_is_reported() -> None:
    # Llama 3.1's template writes only the tool call of an assistant message that has both
    ex = CHECK_CASES["tool_calls_with_content"]
    result = profile_view(profile("llama3_1"), ex)
    dropped = [f for f in result.findings if f.code == "template_drops_content"]
    assert [f.message_index for f in dropped] == [2]


def test_tool_call_is_trained_as_the_model_writes_it() -> None:
    result = profile_view(profile("qwen2_5"), CHECK_CASES["tool_calls"])
    assert result.view is not None
    runs = _trained_text(result.view)
    assert (
        runs[0]
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    )


def test_generation_mask_source_and_disagreement() -> None:
    p = profile("qwen3_training")
    ex = _ex(U, A)
    spans = profile_view(p, ex)
    gen = profile_view(p.with_rules(mask_source="generation"), ex)
    assert spans.view is not None
    assert gen.view is not None
    assert spans.view.token_ids() == gen.view.token_ids()
    # TRL's qwen3 training template also trains the "\n" after <|im_end|>
    assert _trained_text(gen.view) == ["<think>\n\n</think>\n\nhello there<|im_end|>\n"]
    assert _trained_text(spans.view) == ["<think>\n\n</think>\n\nhello there<|im_end|>"]
    disagree = [f for f in spans.findings if f.code == "mask_sources_disagree"]
    assert len(disagree) == 1
    assert disagree[0].message_index == 1


def test_empty_assistant_content_trains_only_the_eot() -> None:
    result = profile_view(profile("gptoss"), CHECK_CASES["empty_content"])
    assert result.view is not None
    assert _trained_text(result.view) == ["<|channel|>final<|message|><|return|>"]


def test_expand_per_turn_weights() -> None:
    ex = _ex(U, A, U2, {**A2, "weight": 0}, {"role": "user", "content": "x"}, A)
    parts = expand_per_turn(ex)
    assert [len(p.messages) for p in parts] == [2, 6]
    assert [m.weight for m in parts[1].messages if m.role == "assistant"] == [0, 0, None]


def test_check_profile_rows() -> None:
    rows = {r.case: r for r in check_profile(profile("gemma3"))}
    assert set(rows) == set(CHECK_CASES)
    assert rows["consecutive_assistant"].outcome == "rejected"
    assert rows["assistant_first"].outcome == "rejected"
    assert rows["regular"].outcome == "rendered"
    rows = {r.case: r for r in check_profile(profile("qwen3"))}
    assert rows["multi_turn"].outcome == "rewritten"


def test_messages_reach_the_template_as_transformers_expects() -> None:
    msgs = template_messages(CHECK_CASES["tool_calls"])
    call = msgs[2]
    assert "content" not in call  # None is dropped, as apply_chat_template drops it
    assert call["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert msgs[3] == {"role": "tool", "content": '{"temperature_c": 21}', "tool_call_id": "call_1"}


def test_text_after_the_last_message_is_not_a_rewrite() -> None:
    # Phi-3.5 ends a render with eos_token after the last message: a prefix render has it where the
    # whole conversation goes on, which changes nothing the model is trained on
    result = profile_view(profile("phi3_5"), _ex(U, A, U2, A2))
    assert result.view is not None
    assert not result.findings
    assert _trained_text(result.view) == ["hello there<|end|>", "sure<|end|>"]
    assert result.view.segments[-1].text == "<|endoftext|>"
    assert result.view.segments[-1].message_index is None


def test_rejection_names_the_message_that_breaks_the_rule() -> None:
    ex = _ex({"role": "system", "content": "s"}, U, A, {"role": "tool", "content": "x"}, U2)
    result = profile_view(profile("gemma3"), ex)
    assert result.view is None
    (finding,) = result.findings
    assert finding.message_index == 3
    assert finding.message.startswith("the template refuses the conversation at message 3 (tool): ")
    assert "Conversation roles must alternate" in finding.message


def test_notes_say_when_generation_blocks_are_missing_and_when_the_date_is_rendered() -> None:
    view = profile_view(profile("llama3_1").with_rules(mask_source="generation"), _ex(U, A)).view
    assert view is not None
    assert any("no {% generation %} blocks" in n for n in view.notes)
    assert _trained_text(view) == ["hello there<|eot_id|>"]
    view = profile_view(profile("gptoss"), _ex(U, A)).view
    assert view is not None
    assert any("strftime_now" in n for n in view.notes)
