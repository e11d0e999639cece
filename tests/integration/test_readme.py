"""The README runs as written: every `tuneset` command in it, on the files the repo ships, and the
HTTP walkthrough and fine-tune loop against a real `tuneset dev` (with only the printed key, and
free ports in place of 8000 and 8100, filled in as a reader would)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples import make_examples
from service.run import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = str(Path(sys.executable).parent)


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def commands(block: str) -> list[str]:
    """Logical lines: continuations joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def cli_commands() -> list[str]:
    return [
        c
        for block in sh_blocks()
        if "localhost:8000" not in block
        for c in commands(block)
        if c.startswith("tuneset ")
    ]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with what a fresh clone holds for the commands: the examples and the test data."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "tests" / "data")
    (tmp_path / ".venv").symlink_to(Path(BIN).parent)  # `make install` made it; the README calls .venv/bin
    return tmp_path


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TUNESET_REDIS_URL")}
    return {**out, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TUNESET_DATA_DIR": ".tuneset"}


def bash(script: str, cwd: Path, *, timeout: float, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=cwd,
        env={**env(), **extra_env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_examples_are_what_make_examples_writes() -> None:
    for name, rows in make_examples.examples().items():
        assert (ROOT / "examples" / name).read_text(encoding="utf-8") == make_examples.render(rows), name


def test_the_readme_names_only_shipped_files() -> None:
    assert len(cli_commands()) >= 6
    for command in cli_commands():
        for word in command.split():
            if re.search(r"\.(jsonl|json)$", word) and not word.startswith(("-o", "train", "dpo")):
                # the model-profile examples name the reference files `make install` puts in .venv
                shipped = (ROOT / word).exists() or (word.startswith(".venv/") and any(ROOT.glob(word)))
                assert shipped or word in ("train.jsonl", "dpo.jsonl"), (command, word)


@pytest.mark.slow
@pytest.mark.parametrize("command", cli_commands())
def test_readme_cli_command_runs_as_written(command: str, workdir: Path) -> None:
    done = bash(command, workdir, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _start_dev(workdir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [f"{BIN}/tuneset", "dev", "--port", str(port)],
        cwd=workdir,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        found = re.search(r"development API key \(tenant dev\): (ts_\S+)", line)
        if found:
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("tuneset dev did not start:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(workdir: Path) -> None:
    port, provider_port = free_port(), free_port()
    service_blocks = [b for b in sh_blocks() if "localhost:8000" in b]
    walkthrough, bad_batch, browse, fine_tune = service_blocks  # in the README's order
    proc, key = _start_dev(workdir, port)
    try:

        def filled(block: str) -> str:
            block = block.replace("KEY=ts_...", f"KEY={key}", 1)
            return block.replace("localhost:8000", f"localhost:{port}").replace("8100", str(provider_port))

        script = "\n".join(
            [
                "set -euo pipefail",  # no waiting: once `tuneset dev` printed its key, the API answers
                "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
                'curl() { command curl --fail-with-body --max-time 120 "$@"; }',  # an HTTP error fails the run
                filled(walkthrough),
                "echo; echo '--- browse'",
                filled(browse),
                "echo; echo '--- fine-tune'",
                "sleep 1",  # the fake provider, started in the background, binds its port
                filled(fine_tune),
                "echo; echo '--- bad batch'",
                "unset -f curl",  # this one is meant to be refused
                filled(bad_batch),
            ]
        )
        done = bash(script, workdir, timeout=300)
        out = done.stdout
        assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
        # what the README says the answers hold
        for stage in re.findall(r'"stage": "(\w+)"', walkthrough):
            assert f'"stage":"{stage}"' in out.replace(" ", ""), stage
        assert '"status":"succeeded"' in out.replace(" ", "")
        assert (workdir / "report.json").exists()
        browsed = out.split("--- browse")[1].split("--- fine-tune")[0].replace(" ", "")
        assert '"items":[{"line":1,' in browsed, browsed[:2000]
        assert '"line":42,' in browsed, browsed[-2000:]  # the stored example
        assert '"segments":' in browsed, browsed[-2000:]  # its views
        assert '"name":"gpt-4o-mini-2024-07-18"' in browsed, browsed[-2000:]  # /v1/models
        ft_part = out.split("--- fine-tune")[1].split("--- bad batch")[0]
        assert '"kind":"fine_tune","status":"succeeded"' in ft_part.replace(" ", ""), ft_part[-2000:]
        assert '"code":"invalid_json"' in out.split("--- bad batch")[1].replace(" ", "")
    finally:
        _stop(proc)


def _printed(*args: str, columns: int = 100) -> list[str]:
    done = bash(shlex.join(["tuneset", *args]), ROOT, timeout=120, COLUMNS=str(columns))
    return [line.rstrip() for line in done.stdout.splitlines()]


def test_the_readme_shows_what_validate_and_inspect_print() -> None:
    shown = README.split("FastChat's sample prints", 1)[1].split("```\n", 2)[1]
    assert shown.splitlines() == _printed("validate", "tests/data/sharegpt_fastchat_dummy.json")
    rows = README.split("or is not trained:\n\n```\n", 1)[1].split("```", 1)[0].splitlines()
    printed = _printed("inspect", "examples/chats.jsonl", "--line", "1")
    assert len(rows) == 4
    for row in rows:
        assert row in printed, row
