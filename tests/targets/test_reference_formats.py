"""Every target's files, written through the CLI (`tuneset convert --to TARGET`), checked by the
platform's own reference: the Together SDK's `check_file`, the google-genai SDK's types for
Vertex AI, and for the others a JSON Schema written from the platform's documentation
(tests/schemas), whose documentation example lines must pass and whose rule-breaking lines must
fail (so each reference is live)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]
import pydantic
import pytest
from click.testing import CliRunner
from google.genai import types
from referencing import Registry, Resource
from together.lib.utils.files import check_file

from service.cli import main
from service.core.problems import CODES
from service.core.targets import registry
from tests.targets.cases import OTHERS, TOOL_CALLS, chat_lines, preference_lines, write_jsonl

SCHEMAS = Path(__file__).parents[1] / "schemas"
FIXES = [
    arg
    for code, info in CODES.items()
    if info.layer == "target" and info.fix
    for arg in ("--policy", f"{code}=fix")
] + ["--policy", "too_few_examples=keep", "--policy", "target_example_count=keep"]


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return loaded


_REFS = Registry().with_resources(
    (s["$id"], Resource.from_contents(s))
    for s in (_schema(n) for n in ("openai-chat", "openai-preference", "fireworks-chat", "bedrock-nova"))
)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema(name), registry=_REFS)


# -- the Vertex AI line, from the google-genai SDK's own models --------------------------------


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", alias_generator=pydantic.alias_generators.to_camel)


class _Turn(types.Content):
    role: Literal["user", "model"]  # narrower than the SDK's str: Vertex tuning takes only these


class VertexSupervised(_Model):
    """A supervised tuning line as types.ReinforcementTuningExample shapes one (contents,
    systemInstruction, tools), every value one of the SDK's own types."""

    system_instruction: types.Content | None = None
    contents: list[_Turn] = pydantic.Field(min_length=1)
    tools: list[types.Tool] | None = None


class _Completion(_Model):
    score: Literal[0, 1]
    completion: _Turn


class VertexPreference(_Model):
    system_instruction: types.Content | None = None
    contents: list[_Turn] = pydantic.Field(min_length=1)
    tools: list[types.Tool] | None = None
    completions: list[_Completion] = pydantic.Field(min_length=2, max_length=2)

    @pydantic.model_validator(mode="after")
    def _one_of_each(self) -> VertexPreference:
        assert sorted(c.score for c in self.completions) == [0, 1], "one completion of each score"
        assert self.contents[-1].role == "user", "the prompt ends on a user turn"
        return self


def _vertex(lines: list[str], model: type[pydantic.BaseModel]) -> None:
    for i, line in enumerate(lines, 1):
        try:
            model.model_validate_json(line)
        except pydantic.ValidationError as e:
            raise AssertionError(f"line {i}: {e}\n{line[:300]}") from None


# -- the checks, per target ---------------------------------------------------------------------


def _alternates(line: dict[str, Any]) -> None:
    roles = [m["role"] for m in line["messages"]]
    assert roles == ["user", "assistant"] * (len(roles) // 2), roles


def _schema_lines(lines: list[str], name: str) -> None:
    validator = _validator(name)
    for i, line in enumerate(lines, 1):
        errors = list(validator.iter_errors(json.loads(line)))
        assert not errors, f"line {i}: {errors[0].message} at {list(errors[0].absolute_path)}"


def check_chat(target: str, path: Path) -> None:
    lines = path.read_text("utf-8").splitlines()
    if target in ("openai", "azure-openai"):
        _schema_lines(lines, "openai-chat")
    elif target == "fireworks":
        _schema_lines(lines, "fireworks-chat")
    elif target == "bedrock-nova":
        _schema_lines(lines, "bedrock-nova")
        for line in lines:
            _alternates(json.loads(line))
    elif target == "together":
        report = check_file(path)
        assert report["is_check_passed"], report
        for line in lines:  # the docs' rule the SDK leaves to the server: no two same roles in a row
            roles = [m["role"] for m in json.loads(line)["messages"]]
            assert all(a != b or a == "tool" for a, b in itertools.pairwise(roles)), roles
    elif target == "vertex-gemini":
        _vertex(lines, VertexSupervised)
    else:
        raise AssertionError(f"no reference check for target {target}")


def check_preference(target: str, path: Path) -> None:
    lines = path.read_text("utf-8").splitlines()
    if target == "together":
        report = check_file(path)
        assert report["is_check_passed"], report
    elif target == "vertex-gemini":
        _vertex(lines, VertexPreference)
    else:
        _schema_lines(lines, "openai-preference")


def convert(src: Path, target: str, out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["convert", str(src), "--to", target, "-o", str(out), *extra, "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("target", registry.names())
def test_every_target_converts_real_irregular_and_tool_conversations_the_platform_accepts(
    target: str, tmp_path: Path
) -> None:
    cases = chat_lines()
    src = write_jsonl(tmp_path / "in.jsonl", cases)
    out = tmp_path / f"{target}.jsonl"
    report = convert(src, target, out, *FIXES)
    lines = out.read_text("utf-8").splitlines()
    assert len(lines) >= len(cases) - 12, (len(lines), len(cases))  # bedrock drops the few it cannot take
    check_chat(target, out)
    codes = {p["code"] for p in report["problems"]}
    if target == "bedrock-nova":
        assert {"target_role_order", "target_tool_calls_unsupported", "target_reserved_string"} <= codes
    if target in ("openai", "azure-openai"):
        assert not {c for c in codes if c.startswith("target_")}


@pytest.mark.parametrize("target", [t for t in registry.names() if "preference" in registry.get(t).kinds])
def test_every_preference_target_writes_lines_the_platform_accepts(target: str, tmp_path: Path) -> None:
    src = tmp_path / "hh.jsonl"
    src.write_text("\n".join(preference_lines()) + "\n")
    out = tmp_path / f"{target}.jsonl"
    convert(src, target if target != "openai" else "preference", out, *FIXES)
    assert len(out.read_text().splitlines()) == len(preference_lines())
    check_preference(target, out)


# -- faithful: the same turns, in the same order, with the same text ---------------------------


def _turns(target: str, line: dict[str, Any]) -> list[tuple[str, str]]:
    if target == "vertex-gemini":
        system = [("system", p["text"]) for p in line.get("systemInstruction", {}).get("parts", [])]
        names = {"model": "assistant", "user": "user"}
        return system + [
            (names[c["role"]], "".join(p.get("text", "") for p in c["parts"])) for c in line["contents"]
        ]
    if target == "bedrock-nova":
        system = [("system", s["text"]) for s in line.get("system", [])]
        return system + [(m["role"], "".join(c["text"] for c in m["content"])) for m in line["messages"]]
    return [(m["role"], m["content"]) for m in line["messages"]]


@pytest.mark.parametrize("target", registry.names())
def test_regular_conversations_keep_every_turn_and_its_text(target: str, tmp_path: Path) -> None:
    from tests.conftest import mtbench_conversations

    cases = mtbench_conversations()
    out = tmp_path / "out.jsonl"
    convert(write_jsonl(tmp_path / "in.jsonl", cases), target, out)
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(written) == len(cases)
    for case, line in zip(cases, written, strict=True):
        assert _turns(target, line) == [(m["role"], m["content"]) for m in case["messages"]]


def test_vertex_maps_tool_calls_to_function_parts_and_splits_weights(tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    convert(write_jsonl(tmp_path / "in.jsonl", TOOL_CALLS), "vertex-gemini", out, *FIXES)
    first, *split = [json.loads(x) for x in out.read_text().splitlines()]
    assert first["tools"] == [{"functionDeclarations": [dict(TOOL_CALLS[0]["tools"][0]["function"].items())]}]
    assert first["contents"][1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Lisbon", "unit": "c"}}}],
    }
    assert first["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21, "sky": "clear"}}}],
    }
    # the second case has a weight-0 first turn: split, one example per trained turn (the call, the answer)
    assert len(split) == 2
    assert split[0]["contents"][-1]["parts"][0] == {"text": "Checking both."}
    assert split[1]["contents"][-1]["parts"] == [{"text": "Rome is 14 degrees warmer than Oslo."}]
    parallel = split[1]["contents"][4]
    assert [p["functionResponse"]["response"] for p in parallel["parts"]] == [
        {"content": "3 degrees, snow"},
        {"temp": 17},
    ]


def test_bedrock_keeps_what_precedes_a_tool_call_and_strips_reserved_strings(tmp_path: Path) -> None:
    out = tmp_path / "b.jsonl"
    answered = {  # a trained exchange, then a tool call: the exchange is kept
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello, what can I do?"},
            *TOOL_CALLS[0]["messages"][1:],
        ],
        "tools": TOOL_CALLS[0]["tools"],
    }
    cases = [*TOOL_CALLS, answered, *OTHERS]
    report = convert(write_jsonl(tmp_path / "in.jsonl", cases), "bedrock-nova", out, *FIXES)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    texts = [c["text"] for line in lines for m in line["messages"] for c in m["content"]]
    assert len(lines) == len(OTHERS) + 1  # both TOOL_CALLS cases have no trained turn before their call
    assert lines[0]["messages"] == [
        {"role": "user", "content": [{"text": "Hi!"}]},
        {"role": "assistant", "content": [{"text": "Hello, what can I do?"}]},
    ]
    assert not any(s in t for t in texts for s in ("User:", "Bot:", "[EOS]"))
    assert "I can't share passwords." in texts  # a refusal part is text
    actions = {(p["code"], p["action"]) for p in report["problems"]}
    assert ("target_tool_calls_unsupported", "fix") in actions
    assert ("target_unsupported_content", "fix") in actions


# -- each reference is live: the documentation's lines pass, rule-breaking lines fail ----------


@pytest.mark.parametrize(
    ("examples", "schema"),
    [
        ("openai", "openai-chat"),
        ("openai-preference", "openai-preference"),
        ("fireworks", "fireworks-chat"),
        ("bedrock-nova", "bedrock-nova"),
    ],
)
def test_documentation_examples_pass_their_schema(examples: str, schema: str) -> None:
    _schema_lines((SCHEMAS / "docs_examples" / f"{examples}.jsonl").read_text().splitlines(), schema)


def test_documentation_examples_pass_the_sdks() -> None:
    report = check_file(SCHEMAS / "docs_examples" / "together.jsonl")
    assert report["is_check_passed"], report
    _vertex((SCHEMAS / "docs_examples" / "vertex-gemini.jsonl").read_text().splitlines(), VertexSupervised)


BAD: dict[str, list[dict[str, Any]]] = {
    "openai-chat": [
        {"messages": [{"role": "user", "content": "hi"}], "extra": 1},
        {"messages": [{"role": "user", "content": "hi", "weight": 0}]},
        {"messages": [{"role": "tool", "content": "x"}]},
    ],
    "fireworks-chat": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]},
    ],
    "bedrock-nova": [
        {
            "schemaVersion": "bedrock-conversation-2024",
            "messages": [
                {"role": "assistant", "content": [{"text": "a"}]},
                {"role": "user", "content": [{"text": "b"}]},
            ],
        },
        {
            "schemaVersion": "bedrock-conversation-2024",
            "messages": [
                {"role": "user", "content": [{"text": "User: hi"}]},
                {"role": "assistant", "content": [{"text": "b"}]},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": [{"text": "a"}]},
                {"role": "assistant", "content": [{"text": "b"}]},
            ]
        },
    ],
    "openai-preference": [
        {
            "input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": "b"},
            ],
            "non_preferred_output": [{"role": "assistant", "content": "c"}],
        },
    ],
}


@pytest.mark.parametrize(("schema", "line"), [(s, line) for s, lines in BAD.items() for line in lines])
def test_schemas_reject_what_the_documentation_forbids(schema: str, line: dict[str, Any]) -> None:
    assert list(_validator(schema).iter_errors(line))


def test_the_sdks_reject_what_their_platform_forbids(tmp_path: Path) -> None:
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "x", "weight": 2},
                ]
            }
        ],
    )
    assert not check_file(bad)["is_check_passed"]
    with pytest.raises(AssertionError):
        _vertex(
            [json.dumps({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})], VertexSupervised
        )
    with pytest.raises(AssertionError):
        _vertex([json.dumps({"contents": [{"role": "user", "parts": [{"txt": "x"}]}]})], VertexSupervised)
