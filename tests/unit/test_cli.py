"""The offline CLI: exit codes, JSON shapes, the terminal view, and all-or-nothing conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli import main
from tests.conftest import jsonl, mtbench_conversations

GOOD = mtbench_conversations()[:12]


def _file(tmp_path: Path, *values: Any, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(jsonl(*values))
    return str(path)


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_validate_ok_exits_0_with_the_json_report(tmp_path: Path) -> None:
    result = invoke("validate", _file(tmp_path, *GOOD), "--json", "--per-example", "--model", "gpt-4o-mini")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["examples"] == 12
    assert report["ok"] is True
    for key in ("problems", "tokens", "default_epochs", "estimated_cost_usd", "fixes"):
        assert key in report
    assert report["tokens"]["billed_total"] == sum(e["billed_tokens"] for e in report["examples_detail"])
    assert report["tokens"]["trained_total"] == sum(e["trained_tokens"] for e in report["examples_detail"])
    assert report["default_epochs"] == 8  # 100 // 12
    expected_cost = report["tokens"]["billable_total"] * 8 * 3.0 / 1e6
    assert report["estimated_cost_usd"] == pytest.approx(expected_cost)
    assert [e["line"] for e in report["examples_detail"]] == list(range(1, 13))
    group = report["problems"][0]
    assert set(group) == {"code", "severity", "action", "count", "message", "lines", "samples"}
    problem = report["problems_detail"][0]
    assert set(problem) >= {"line", "message_index", "code", "severity", "message"}


def test_validate_errors_exit_1_and_name_line_and_rule(tmp_path: Path) -> None:
    bad = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 2}]
    }
    result = invoke("validate", _file(tmp_path, *GOOD, bad))
    assert result.exit_code == 1
    assert "invalid_weight" in result.output
    assert "13" in result.output  # the line
    as_json = json.loads(invoke("validate", _file(tmp_path, *GOOD, bad), "--json").output)
    weight = [p for p in as_json["problems"] if p["code"] == "invalid_weight"]
    message = "message 1 has weight 2; it must be 0 or 1"
    assert weight == [
        {
            "code": "invalid_weight",
            "severity": "error",
            "action": "fail",
            "count": 1,
            "message": message,
            "lines": [13],
            "samples": [{"line": 13, "message_index": 1, "message": message}],
        }
    ]


def test_policy_changes_the_outcome(tmp_path: Path) -> None:
    bad = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 2}]
    }
    result = invoke("validate", _file(tmp_path, *GOOD, bad), "--policy", "invalid_weight=drop", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["examples_out"] == 12


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "MISSING.jsonl"],
        ["validate", "{f}", "--model", "gpt-9"],
        ["validate", "{f}", "--policy", "nonsense=fix"],
        ["validate", "{f}", "--policy", "invalid_json=keep"],
        ["validate", "{f}", "--format", "csv"],
        ["inspect", "{f}", "--model", "gpt-4o", "--template", "harmony"],
        ["inspect", "{f}", "--line", "99"],
        ["validate"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    f = _file(tmp_path, *GOOD)
    result = invoke(*[a.format(f=f) for a in args])
    assert result.exit_code == 2, result.output


def test_inspect_json_shape_and_counts(tmp_path: Path) -> None:
    result = invoke("inspect", _file(tmp_path, *GOOD), "--line", "2", "--json")
    assert result.exit_code == 0
    view = json.loads(result.output)
    assert view["line"] == 2
    assert set(view["segments"][0]) == {"text", "token_ids", "message_index", "role", "trained", "reason"}
    assert view["trained_tokens"] == sum(len(s["token_ids"]) for s in view["segments"] if s["trained"])
    assert view["billed_tokens"] == sum(len(s["token_ids"]) for s in view["segments"])
    harmony = json.loads(invoke("inspect", _file(tmp_path, *GOOD), "--template", "harmony", "--json").output)
    assert harmony["encoding"] == "o200k_harmony"
    assert harmony["segments"][-1]["text"] == "<|return|>"


def test_inspect_highlights_trained_tokens_in_a_terminal(tmp_path: Path) -> None:
    f = _file(
        tmp_path, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    )
    plain = invoke("inspect", f)
    assert "\x1b[" not in plain.output  # no escape codes when not a terminal
    colour = invoke("inspect", f, env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert colour.exit_code == 0
    assert "\x1b[" in colour.output
    assert "trained" in colour.output


def test_convert_writes_provider_jsonl_after_fixes(tmp_path: Path) -> None:
    two_assistants = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "assistant", "content": "How can I help?"},
        ]
    }
    f = _file(tmp_path, *GOOD, two_assistants)
    out = tmp_path / "out.jsonl"
    result = invoke("convert", f, "--to", "openai", "-o", str(out), "--policy", "consecutive_same_role=fix")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 13
    assert lines[-1]["messages"][1] == {"role": "assistant", "content": "Hello.\n\nHow can I help?"}


def test_convert_writes_nothing_when_an_example_fails(tmp_path: Path) -> None:
    f = _file(tmp_path, *GOOD, {"messages": "nope"})
    out = tmp_path / "out.jsonl"
    result = invoke("convert", f, "--to", "openai", "-o", str(out))
    assert result.exit_code == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tuneset-")]


def test_convert_sharegpt_to_openai(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharegpt.jsonl"
    result = invoke(
        "convert", str(data_dir / "sharegpt_fastchat_dummy.json"), "--to", "openai", "-o", str(out)
    )
    assert result.exit_code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 500
    assert json.loads(lines[0])["messages"][0] == {"role": "user", "content": "Who are you?"}


def test_convert_to_preference(tmp_path: Path) -> None:
    pair = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
    }
    f = _file(tmp_path, *[pair] * 1, *[{**pair, "chosen": pair["chosen"] + f" {i}"} for i in range(10)])
    out = tmp_path / "dpo.jsonl"
    result = invoke("convert", f, "--to", "preference", "-o", str(out))
    assert result.exit_code == 0, result.output
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }


def test_codes_markdown_is_the_checked_in_page() -> None:
    page = Path(__file__).parents[2] / "docs" / "problem-codes.md"
    assert invoke("codes", "--markdown").output == page.read_text(), (
        "run: tuneset codes --markdown > docs/problem-codes.md"
    )


def test_inspect_end_of_turn_training_is_configurable(tmp_path: Path) -> None:
    f = _file(tmp_path, *GOOD)
    on = json.loads(invoke("inspect", f, "--template", "chatml", "--json").output)
    off = json.loads(invoke("inspect", f, "--template", "chatml", "--no-train-eot", "--json").output)
    assistant_turns = sum(1 for m in GOOD[0]["messages"] if m["role"] == "assistant")
    assert on["trained_tokens"] - off["trained_tokens"] == assistant_turns
    ends = [s for s in off["segments"] if s["text"] == "<|im_end|>"]
    assert ends
    assert not any(s["trained"] for s in ends)


def test_inspect_a_preference_example_counts_one_scope(tmp_path: Path) -> None:
    pair = {
        "input": {"messages": [{"role": "user", "content": "What is 2+2?"}]},
        "preferred_output": [{"role": "assistant", "content": "4"}],
        "non_preferred_output": [{"role": "assistant", "content": "Five, probably."}],
    }
    view = json.loads(invoke("inspect", _file(tmp_path, pair), "--json").output)
    assert view["billed_tokens"] == sum(len(s["token_ids"]) for s in view["segments"])
    assert any("preferred" in n for n in view["notes"])


@pytest.mark.parametrize(
    "table",
    [
        "models = 5\n",
        '[models.x]\nencoding = "o200k_base"\nmax_tokens = 10\naliases = 5\n',
        '[models.x]\nencoding = "nope"\nmax_tokens = 10\n',
        "[models.x]\nmax_tokens = 10\n",
        "not toml [",
    ],
)
def test_a_bad_model_table_is_a_usage_error(tmp_path: Path, table: str) -> None:
    models = tmp_path / "models.toml"
    models.write_text(table)
    result = invoke("validate", _file(tmp_path, *GOOD), "--models", str(models))
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_convert_into_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(
        "convert", _file(tmp_path, *GOOD), "--to", "openai", "-o", str(tmp_path / "no" / "x.jsonl")
    )
    assert result.exit_code == 2


def test_convert_leaves_no_temporary_file_when_input_is_undecodable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": [{"role": "user", "content": "\xff"}]}\n')
    out = tmp_path / "out" / "x.jsonl"
    out.parent.mkdir()
    result = invoke("convert", str(bad), "--to", "openai", "-o", str(out))
    assert result.exit_code == 1
    assert list(out.parent.iterdir()) == []


def _messy(tmp_path: Path) -> str:
    """Examples that raise long codes (consecutive_same_role, trailing_non_assistant, ...)."""
    same_role = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "again, with a message long enough to need the whole width"},
            {"role": "assistant", "content": "yo"},
        ]
    }
    trailing = {"messages": [*GOOD[0]["messages"], {"role": "user", "content": "and then?"}]}
    spaced = {"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]}
    return _file(tmp_path, *GOOD, same_role, trailing, spaced)


@pytest.mark.parametrize("columns", ["80", "60", "40"])
def test_problem_codes_are_never_wrapped_in_a_narrow_terminal(tmp_path: Path, columns: str) -> None:
    """Codes are what `--policy` takes: each one appears whole on a line, whatever the width."""
    f = _messy(tmp_path)
    codes = [g["code"] for g in json.loads(invoke("validate", f, "--json").output)["problems"]]
    assert {"consecutive_same_role", "trailing_non_assistant", "no_system_message"} <= set(codes)
    result = invoke("validate", f, env={"COLUMNS": columns})
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= int(columns)
    for code in codes:
        assert any(code in line for line in lines), (code, result.output)


def test_validate_json_groups_repeated_problems(tmp_path: Path) -> None:
    """One entry per code and action with its count and first lines; every finding only with
    --per-example, `line` 1-based and `message_index` 0-based."""
    same_role = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "yo"},
        ]
    }
    f = _file(tmp_path, *GOOD[:2], *[{**same_role, "n": i} for i in range(30)], name="many.jsonl")
    report = json.loads(invoke("validate", f, "--json", "--policy", "unknown_key=fix").output)
    assert report["problems_detail"] is None
    groups = {g["code"]: g for g in report["problems"]}
    assert len(report["problems"]) == len(groups)  # one action per code here: one entry per code
    system = groups["no_system_message"]
    assert (system["count"], system["severity"], system["action"]) == (32, "warning", "keep")
    assert system["lines"] == list(range(1, 21))  # the first 20, 1-based
    assert [s["line"] for s in system["samples"]] == [1, 2, 3, 4, 5]
    same = groups["consecutive_same_role"]
    assert same["count"] == 30 == report["problem_counts"]["consecutive_same_role"]
    assert same["samples"][0] == {"line": 3, "message_index": 1, "message": same["message"]}
    detail = json.loads(
        invoke("validate", f, "--json", "--per-example", "--policy", "unknown_key=fix").output
    )["problems_detail"]
    assert [p["line"] for p in detail if p["code"] == "consecutive_same_role"] == list(range(3, 33))
    assert {p["message_index"] for p in detail if p["code"] == "consecutive_same_role"} == {1}
    assert len(detail) == sum(g["count"] for g in report["problems"])
    help_text = " ".join(invoke("validate", "--help").output.split())
    assert "`line` is 1-based" in help_text
    assert "`message_index` 0-based" in help_text


def test_inspect_labels_the_encoding_and_what_is_billed(tmp_path: Path) -> None:
    f = _file(tmp_path, *GOOD[:1])
    listed = {line.split()[0]: line.split()[1] for line in invoke("models").output.splitlines()}
    for model in ("gpt-4o-mini-2024-07-18", "gpt-3.5-turbo-0125"):
        out = invoke("inspect", f, "--model", model, env={"COLUMNS": "200"}).output
        assert out.splitlines()[0] == f"line 1  model {model}  ({listed[model]})"
        assert "billed tokens " in out
    for template, encoding in (("harmony", "o200k_harmony"), ("chatml", "cl100k_im")):
        out = invoke("inspect", f, "--template", template, env={"COLUMNS": "200"}).output
        assert out.splitlines()[0] == f"line 1  template {template}  ({encoding})"
        assert "billed" not in out
        assert re.search(r"^tokens \d+ · trained tokens \d+$", out, re.MULTILINE), out
