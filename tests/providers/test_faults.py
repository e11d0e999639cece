"""Injected faults against the real SDK: what its retries absorb, what reaches the caller, and
how `is_transient` classifies it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import openai
import pytest

from service.providers.client import (
    ProviderProfile,
    find_file,
    is_transient,
    make_client,
    upload_file,
    wait_processed,
)
from service.providers.fake import FakeProvider
from tests.providers.conftest import API_KEY, LOOPBACK, chat_examples, write_jsonl


def requests_to(fake: FakeProvider, path: str) -> list[int | None]:
    return [r["status"] for r in fake.state()["requests"] if r["path"] == path]


def test_429s_with_retry_after_are_absorbed_and_the_file_exists_once(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(12))
    fake.add_fault("POST /v1/files", status=429, retry_after=0.05, times=2)
    started = time.monotonic()
    file_id = upload_file(client, path, "t.jsonl")
    # the SDK's own backoff would wait at least 0.375 + 0.75 s: it waited what Retry-After said
    assert time.monotonic() - started < 1.0
    assert requests_to(fake, "/v1/files") == [429, 429, 200]
    [stored] = fake.state()["files"]
    assert stored["id"] == file_id
    assert stored["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # the retry resent it all


def test_500s_are_retried_then_surface_as_transient(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(12))
    fake.add_fault("POST /v1/files", status=500, times=2, retry_after=0.01)
    upload_file(client, path, "t.jsonl")
    assert requests_to(fake, "/v1/files") == [500, 500, 200]
    fake.reset()
    fake.add_fault("POST /v1/files", status=503, times=None, retry_after=0.01)
    with pytest.raises(openai.InternalServerError) as e:
        upload_file(client, path, "t.jsonl")
    assert e.value.status_code == 503
    assert is_transient(e.value)
    assert requests_to(fake, "/v1/files") == [503, 503, 503]
    assert fake.state()["files"] == []


def test_rate_limit_errors_surface_when_retries_run_out(fake: FakeProvider, profile: ProviderProfile) -> None:
    fake.add_fault("GET /v1/fine_tuning/jobs/*", status=429, retry_after=0.01, times=None)
    with (
        make_client(profile, allow=LOOPBACK, max_retries=1) as client,
        pytest.raises(openai.RateLimitError) as e,
    ):
        client.fine_tuning.jobs.retrieve("ftjob-x")
    assert e.value.code == "rate_limit_exceeded"
    assert is_transient(e.value)


def test_a_dropped_connection_is_a_connection_error_without_retries(
    fake: FakeProvider, profile: ProviderProfile, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(12))
    fake.add_fault("POST /v1/files", drop=True)
    with make_client(profile, allow=LOOPBACK, max_retries=0) as client:
        with pytest.raises(openai.APIConnectionError) as e:
            upload_file(client, path, "t.jsonl")
        assert not isinstance(e.value, openai.APITimeoutError)
        assert is_transient(e.value)
        assert fake.state()["files"] == []  # dropped before the provider saw it
        fake.add_fault("POST /v1/files", drop=True)
    with make_client(profile, allow=LOOPBACK, max_retries=1) as client:
        upload_file(client, path, "t.jsonl")  # the SDK reconnects and retries
    assert len(fake.state()["files"]) == 1


def test_a_response_lost_after_the_provider_stored_the_file_can_be_found(
    fake: FakeProvider, profile: ProviderProfile, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(12))
    fake.add_fault("POST /v1/files", drop=True, phase="after")
    with make_client(profile, allow=LOOPBACK, max_retries=0) as client:
        with pytest.raises(openai.APIConnectionError):
            upload_file(client, path, "build-7.jsonl")
        [stored] = fake.state()["files"]  # the provider has it though the caller never heard
        found = find_file(client, "build-7.jsonl", path.stat().st_size)
        assert found is not None
        assert found.id == stored["id"]


def test_a_slow_response_hits_a_short_timeout(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    file_id = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
    fake.add_fault("GET /v1/files/*", delay_s=1.0)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError) as e:
        wait_processed(client.with_options(timeout=0.2, max_retries=0), file_id, timeout_s=5)
    assert time.monotonic() - started < 0.9
    assert is_transient(e.value)
    fake.add_fault("GET /v1/files/*", delay_s=0.5)
    assert (
        wait_processed(client.with_options(timeout=0.2, max_retries=1), file_id, 5, poll_s=0.02).id == file_id
    )


def test_a_wrong_key_is_refused_and_not_transient(fake: FakeProvider, tmp_path: Path) -> None:
    fake.configure(api_key=API_KEY)
    wrong = ProviderProfile(name="fake", base_url=fake.base_url, api_key="sk-wrong-secret-key")
    with make_client(wrong, allow=LOOPBACK) as client, pytest.raises(openai.AuthenticationError) as e:
        client.files.list()
    assert e.value.code == "invalid_api_key"
    assert not is_transient(e.value)
    assert "sk-wrong-secret-key" not in str(e.value)
    assert requests_to(fake, "/v1/files") == [401]  # 401 is not retried
    with make_client(
        ProviderProfile(name="fake", base_url=fake.base_url, api_key=API_KEY), allow=LOOPBACK
    ) as client:
        assert list(client.files.list()) == []


def test_an_unknown_file_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve("file-missing")
    assert "No such File object: file-missing" in e.value.message  # the SDK prefixes "Error code: 404 - "
    assert not is_transient(e.value)


def test_faults_match_globs_and_only_as_often_as_asked(fake: FakeProvider, client: openai.OpenAI) -> None:
    fake.add_fault("* /v1/fine_tuning/*", status=500, times=1)
    assert list(client.files.list()) == []  # not matched
    assert list(client.fine_tuning.jobs.list()) == []  # matched once, retried
    [fault] = fake.state()["faults"]
    assert fault["hits"] == 1
    assert requests_to(fake, "/v1/fine_tuning/jobs") == [500, 200]
