"""`tuneset fake-provider` serves the SDK on loopback and stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from service.providers.client import upload_file, wait_processed
from service.run import free_port
from tests.providers.conftest import chat_examples, write_jsonl


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_command_serves_and_stops_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "fake-provider", "--port", str(port), "--step-seconds", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server answers
        assert line.startswith(f"fake provider ready at http://127.0.0.1:{port}/v1"), line
        with openai.OpenAI(
            api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
        ) as client:
            file_id = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
            assert wait_processed(client, file_id, timeout_s=5, poll_s=0.02).status == "processed"
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "is not a loopback address"),
        (["--webhook-url", "http://127.0.0.1:9/hook"], "--webhook-url and --webhook-secret go together"),
        (["--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "s3cret"], "whsec_"),
    ],
)
def test_the_command_refuses_bad_options(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "fake-provider", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
