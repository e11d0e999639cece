"""Turn markers leaked into a message by a transcript conversion: flagged, kept by default, cut by `fix`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli import main
from service.core.lint import MARKER_STARTS, lint
from service.core.pipeline import Recipe, run
from service.core.problems import ROLE_MARKERS, Action
from tests.conftest import chat, findings, jsonl, mtbench_conversations

LEAK = "Sure, here is how.\nHuman: And now tell me the secret."


def hh_text(user: str, assistant: str) -> dict[str, str]:
    return {"text": f"\n\nHuman: {user}\n\nAssistant: {assistant}"}


def hh_file(tmp_path: Path) -> Path:
    """Eleven HH transcripts of real turns (the model's minimum is 10); the last one leaked a turn."""
    good = [
        hh_text(c["messages"][0]["content"], c["messages"][1]["content"])
        for c in mtbench_conversations()[:10]
    ]
    path = tmp_path / "hh.jsonl"
    path.write_bytes(jsonl(*good, hh_text("How do I reset my password?", LEAK)))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_a_leaked_human_turn_in_an_hh_conversion_is_flagged_and_kept(tmp_path: Path) -> None:
    with hh_file(tmp_path).open("rb") as f:
        report = run(f, Recipe(), per_example=True)
    assert report.format == "hh"
    flagged = [p for p in findings(report) if p.code == "role_marker_in_content"]
    assert [(p.line, p.message_index, p.severity, p.action) for p in flagged] == [(11, 1, "warning", "keep")]
    assert "'\\nHuman:'" in flagged[0].message
    assert report.ok
    assert report.changes == []


def test_the_cli_fix_cuts_the_message_at_the_marker(tmp_path: Path) -> None:
    source = hh_file(tmp_path)
    out = tmp_path / "out.jsonl"
    result = invoke(
        "convert",
        str(source),
        "--to",
        "openai",
        "-o",
        str(out),
        "--policy",
        "role_marker_in_content=fix",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    changes = [c for c in report["changes"] if c["code"] == "role_marker_in_content"]
    assert [(c["kind"], c["line"], c["message_index"]) for c in changes] == [("cut_at_role_marker", 11, 1)]
    assert "'\\nHuman:'" in changes[0]["detail"]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[-1]["messages"] == [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "Sure, here is how."},
    ]
    assert written[:-1] == [
        {"messages": [{"role": r, "content": t} for r, t in zip(("user", "assistant"), turn, strict=True)]}
        for turn in (
            (c["messages"][0]["content"], c["messages"][1]["content"]) for c in mtbench_conversations()[:10]
        )
    ]

    validated = invoke("validate", str(source), "--policy", "role_marker_in_content=fix", "--json")
    assert json.loads(validated.stdout)["fixes"] == {"cut_at_role_marker": 1}


def test_the_fix_reaches_an_hh_preference_reply() -> None:
    shared = "\n\nHuman: Where is Paris?\n\nAssistant:"
    value = {"chosen": f"{shared} In France.\nHuman: thanks", "rejected": f"{shared} In Texas."}
    report = run(
        jsonl(value).splitlines(), Recipe(policies={"role_marker_in_content": Action.FIX}), per_example=True
    )
    flagged = [(p.code, p.message_index, p.action) for p in findings(report) if p.code.startswith("role")]
    assert flagged == [
        ("role_marker_in_content", 1, "fix")
    ]  # the preferred reply follows the 1-message prompt
    assert [(c.kind, c.message_index) for c in report.changes] == [("cut_at_role_marker", 1)]


@pytest.mark.parametrize("marker", ROLE_MARKERS)
def test_every_marker_is_found_after_text_in_user_and_assistant_turns(marker: str) -> None:
    example = chat(("user", f"Hello.{marker} more"), ("assistant", f"Hi.{marker}user\nleaked"))
    found = [(p.code, p.message_index) for p in lint(example, 1) if p.code == "role_marker_in_content"]
    assert found == [("role_marker_in_content", 0), ("role_marker_in_content", 1)]
    assert marker[0] in MARKER_STARTS  # the hot path's precheck looks only for these


def test_a_marker_that_opens_the_text_or_sits_in_a_system_prompt_is_not_a_leak() -> None:
    example = chat(
        ("system", "Answer like this:\nHuman: a question\nAssistant: an answer"),
        ("user", "[INST] what is 2+2?"),
        ("assistant", "Human: is what you are. Assistant: is what I am."),
    )
    assert [p.code for p in lint(example, 1) if p.code == "role_marker_in_content"] == []
