"""deploy/Dockerfile, linted by reading its instructions (no Docker engine here): a non-root
USER before the final CMD, dependencies from uv.lock with `uv sync --locked`, no installs at
run time, and a final stage that carries the built venv but not the build tools.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# Words that mean a build toolchain or an installer is in (or run in) a stage.
TOOLCHAIN = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6?-dev|rustc|cargo|uv|uvx|pip3?)\b"
)


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return out


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append(Stage(base=words[0], name=name))
        elif found:
            found[-1].instructions.append(ins)
    assert found, "no FROM"
    return found


def run_commands(stage: Stage) -> list[str]:
    return [i.args for i in stage.instructions if i.keyword == "RUN"]


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def final(text: str) -> Stage:
    return stages(text)[-1]


def test_parser_on_a_small_example() -> None:
    example = 'FROM a AS b\nRUN x \\\n  # note\n  && y\nFROM c\nUSER 10001\nCMD ["z"]\n'
    parsed = stages(example)
    assert [(s.base, s.name) for s in parsed] == [("a", "b"), ("c", None)]
    assert [" ".join(c.split()) for c in run_commands(parsed[0])] == ["x && y"]
    assert [i.keyword for i in parsed[1].instructions] == ["USER", "CMD"]


def test_multi_stage(text: str) -> None:
    assert len(stages(text)) >= 2, "a builder stage and a runtime stage"


def test_runs_as_a_non_root_user(final: Stage) -> None:
    keywords = [i.keyword for i in final.instructions]
    starts = [n for n, k in enumerate(keywords) if k in {"CMD", "ENTRYPOINT"}]
    assert starts, "the final stage has no CMD or ENTRYPOINT"
    users = [i.args for i in final.instructions[: max(starts)] if i.keyword == "USER"]
    assert users, "no USER before the final CMD/ENTRYPOINT"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0", ""}, f"runs as {users[-1]!r}"


def test_final_stage_starts_from_a_base_image_not_a_build_stage(text: str, final: Stage) -> None:
    earlier = {s.name for s in stages(text)[:-1] if s.name}
    assert final.base not in earlier, "the runtime stage must not inherit the builder's tools"


def test_dependencies_come_from_the_lock_file(text: str) -> None:
    syncs = [cmd for stage in stages(text) for cmd in run_commands(stage) if "uv sync" in cmd]
    assert syncs, "no `uv sync`"
    for cmd in syncs:
        assert "--locked" in shlex.split(cmd), cmd
        assert "--no-dev" in shlex.split(cmd), cmd
    assert any("--no-editable" in shlex.split(cmd) for cmd in syncs), (
        "the project must be installed into the venv, not linked to the build directory"
    )
    runs = [cmd for stage in stages(text) for cmd in run_commands(stage)]
    assert not any(re.search(r"\buv\s+(pip\s+install|add|lock)\b", cmd) for cmd in runs), (
        "install only what uv.lock says"
    )


def test_nothing_is_installed_at_run_time(final: Stage) -> None:
    for ins in final.instructions:
        if ins.keyword in {"CMD", "ENTRYPOINT", "RUN"}:
            assert not re.search(r"\b(pip3?|uv)\b.*\binstall\b|\buv\s+(sync|run)\b", ins.args), ins.args
            assert "curl" not in ins.args, ins.args
            assert "wget" not in ins.args, ins.args


def test_final_stage_has_no_build_toolchain(final: Stage) -> None:
    for command in run_commands(final):
        assert not re.search(r"\bapt(-get)?\s+install\b", command) or not TOOLCHAIN.search(command), command
        assert not re.search(r"\b(pip3?|uv)\b.*\binstall\b", command), command
    for ins in final.instructions:
        if ins.keyword in {"COPY", "ADD"}:
            assert not re.search(r"(^|/)(uv|uvx)(\s|$)", ins.args), f"uv copied into the runtime: {ins.args}"
            assert "astral-sh/uv" not in ins.args, ins.args


def test_final_stage_copies_only_the_venv_from_the_builder(text: str, final: Stage) -> None:
    builder_names = {s.name for s in stages(text)[:-1] if s.name}
    copies = [i.args for i in final.instructions if i.keyword == "COPY"]
    from_builder = [c for c in copies if any(f"--from={n}" in c for n in builder_names)]
    assert from_builder, "the runtime stage must take the venv from the builder"
    for c in from_builder:
        assert "/opt/venv" in c, c


def test_the_package_and_its_rank_files_are_in_the_build(text: str) -> None:
    copied = " ".join(i.args for s in stages(text) for i in s.instructions if i.keyword == "COPY")
    for path in ("service", "workers", "pyproject.toml", "uv.lock"):
        assert re.search(rf"(^|\s){re.escape(path)}(\s|/|$)", copied), f"{path} is not copied"
    # The rank files ship inside the package, so copying service/ bakes them in.
    assert sorted(p.name for p in (ROOT / "service" / "core" / "data").glob("*.tiktoken.gz")) == [
        "cl100k_base.tiktoken.gz",
        "o200k_base.tiktoken.gz",
    ]
