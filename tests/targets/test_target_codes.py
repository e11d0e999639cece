"""Every `target_*` problem code, reached as a user does (`tuneset validate --target` and
`convert --to`), with what each policy does: keep writes it as is, fix applies the code's fix,
drop leaves the example out, fail fails the file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli import main
from service.core.problems import CODES
from tests.targets.cases import TOOL_CALLS, write_jsonl

FILLER = [  # enough regular examples for every target's minimum
    {
        "messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": str(2 * i)},
        ]
    }
    for i in range(12)
]


@dataclass
class Case:
    code: str
    target: str
    example: dict[str, Any]
    model: str = "gpt-4o-mini"


def _msgs(*pairs: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


CASES = [
    Case("target_role_order", "together", _msgs(("user", "a"), ("assistant", "b"), ("assistant", "c"))),
    Case("target_role_order", "fireworks", _msgs(("user", "a"), ("system", "late"), ("assistant", "b"))),
    Case(
        "target_role_order",
        "bedrock-nova",
        _msgs(("assistant", "hi"), ("user", "a"), ("assistant", "b"), ("user", "c")),
    ),
    Case(
        "target_weight_unsupported",
        "vertex-gemini",
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "weight": 1},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d", "weight": 0},
                {"role": "user", "content": "e"},
                {"role": "assistant", "content": "f", "weight": 1},
            ]
        },
    ),
    Case(
        "target_tool_calls_unsupported",
        "bedrock-nova",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                *TOOL_CALLS[0]["messages"][1:],
            ],
            "tools": TOOL_CALLS[0]["tools"],
        },
    ),
    Case(
        "target_reserved_string",
        "bedrock-nova",
        _msgs(("user", "Say User: hi"), ("assistant", "Bot: hi [EOS]")),
    ),
    Case(
        "target_unsupported_content",
        "together",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                },
                {"role": "assistant", "content": "a cat"},
            ]
        },
    ),
    Case(
        "target_over_token_limit",
        "azure-openai",
        _msgs(("user", "word " * 33_000), ("assistant", "ok")),
        "gpt-4.1-nano",
    ),
]


def _run(case: Case, tmp_path: Path, *policies: str) -> tuple[int, dict[str, Any], list[str]]:
    src = write_jsonl(tmp_path / "in.jsonl", [case.example, *FILLER])
    out = tmp_path / "out.jsonl"
    args = ["convert", str(src), "--to", case.target, "-o", str(out), "-m", case.model, "--json"]
    for p in policies:
        args += ["--policy", p]
    result = CliRunner().invoke(main, [*args, "--policy", "over_token_limit=keep"])
    report = json.loads(result.stdout)
    lines = out.read_text().splitlines() if out.exists() else []
    return result.exit_code, report, lines


def _found(report: dict[str, Any], code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in report["problems"] if p["code"] == code]
    assert found, report["problems"]
    assert found[0]["lines"] == [1], found
    return found[0]


def test_every_target_code_has_a_case() -> None:
    target_codes = {c for c, info in CODES.items() if info.layer == "target"}
    assert {c.code for c in CASES} | {"target_example_count"} == target_codes


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.code}-{c.target}")
def test_each_code_is_reported_with_its_default(case: Case, tmp_path: Path) -> None:
    code, report, lines = _run(case, tmp_path)
    group = _found(report, case.code)
    assert group["action"] == CODES[case.code].default.value
    if CODES[case.code].severity == "error":
        assert code == 1
        assert lines == []  # nothing written when an example fails
    else:
        assert code == 0
        assert len(lines) == 1 + len(FILLER)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.code}-{c.target}")
def test_drop_leaves_only_that_example_out(case: Case, tmp_path: Path) -> None:
    code, report, lines = _run(case, tmp_path, f"{case.code}=drop")
    assert code == 0, report["problems"]
    assert _found(report, case.code)["action"] == "drop"
    assert len(lines) == len(FILLER)


@pytest.mark.parametrize(
    "case", [c for c in CASES if CODES[c.code].fix], ids=lambda c: f"{c.code}-{c.target}"
)
def test_fix_writes_what_the_target_can_take(case: Case, tmp_path: Path) -> None:
    code, report, lines = _run(case, tmp_path, f"{case.code}=fix")
    assert code == 0, report["problems"]
    assert _found(report, case.code)["action"] == "fix"
    written = [json.loads(x) for x in lines[: len(lines) - len(FILLER)]]
    text = json.dumps(written)
    if case.code == "target_role_order":
        assert len(written) == 1
        if case.target == "together":
            assert [m["role"] for m in written[0]["messages"]] == ["user", "assistant"]
            assert written[0]["messages"][1]["content"] == "b\n\nc"
        elif case.target == "fireworks":
            assert [m["role"] for m in written[0]["messages"]] == ["system", "user", "assistant"]
        else:
            assert [m["role"] for m in written[0]["messages"]] == ["user", "assistant"]
    elif case.code == "target_weight_unsupported":  # split: one example per trained turn
        assert [c["contents"][-1]["parts"][0]["text"] for c in written] == ["b", "f"]
        assert len(written[1]["contents"]) == 6
    elif case.code == "target_tool_calls_unsupported":
        assert written == [
            {
                "schemaVersion": "bedrock-conversation-2024",
                "messages": [
                    {"role": "user", "content": [{"text": "Hi"}]},
                    {"role": "assistant", "content": [{"text": "Hello"}]},
                ],
            }
        ]
    elif case.code == "target_reserved_string":
        assert "User:" not in text
        assert "[EOS]" not in text
    elif case.code == "target_unsupported_content":
        assert "example.com" not in text
        assert written[0]["messages"][0]["content"] == "what?"


def test_too_few_examples_for_the_target_fails_the_file_unless_kept(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", FILLER[:2])
    out = tmp_path / "out.jsonl"
    base = [
        "convert",
        str(src),
        "--to",
        "fireworks",
        "-o",
        str(out),
        "--json",
        "--policy",
        "too_few_examples=keep",
    ]
    failed = CliRunner().invoke(main, base)
    assert failed.exit_code == 1
    group = _found_file(json.loads(failed.stdout), "target_example_count")
    assert "at least 3" in group["message"]
    assert not out.exists()
    kept = CliRunner().invoke(main, [*base, "--policy", "target_example_count=keep"])
    assert kept.exit_code == 0, kept.stdout
    assert len(out.read_text().splitlines()) == 2


def _found_file(report: dict[str, Any], code: str) -> dict[str, Any]:
    group: dict[str, Any] = next(p for p in report["problems"] if p["code"] == code)
    return group


def test_validate_target_reports_without_writing(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [CASES[0].example, *FILLER])
    ok = CliRunner().invoke(main, ["validate", str(src), "--json"])
    assert ok.exit_code == 0
    bad = CliRunner().invoke(main, ["validate", str(src), "--target", "together", "--json"])
    assert bad.exit_code == 1
    assert _found(json.loads(bad.stdout), "target_role_order")["action"] == "fail"
    unknown = CliRunner().invoke(main, ["validate", str(src), "--target", "nope"])
    assert unknown.exit_code == 2
    assert "together" in unknown.output
