"""The client wrapper's own rules: profiles that keep their key out of logs, Azure clients, the
translation of a fine-tune request, and which errors are transient."""

from __future__ import annotations

from pathlib import Path

import httpx2
import openai
import pytest

from service.providers.client import (
    FineTuneRequest,
    ProviderProfile,
    create_fine_tune,
    is_transient,
    make_client,
    upload_file,
    wait_processed,
)
from service.providers.fake import FakeProvider
from tests.providers.conftest import API_KEY, LOOPBACK, chat_examples, write_jsonl


def test_a_profile_never_shows_its_key() -> None:
    profile = ProviderProfile(name="acme", base_url="https://api.example/v1", api_key="sk-very-secret")
    for shown in (repr(profile), str(profile), f"{profile}", repr([profile]), repr({"p": profile})):
        assert "sk-very-secret" not in shown
        assert "acme" in shown
    assert profile.api_key == "sk-very-secret"


def test_an_azure_profile_makes_an_azure_client_that_the_fake_serves(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.configure(api_key=API_KEY)
    profile = ProviderProfile(
        name="azure", base_url=fake.url, api_key=API_KEY, kind="azure", api_version="2024-10-21"
    )
    with make_client(profile, allow=LOOPBACK, max_retries=0) as client:
        assert isinstance(client, openai.AzureOpenAI)
        file_id = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
        wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
        job = create_fine_tune(client, FineTuneRequest(model="gpt-4o-mini", training_file=file_id))
        assert job.training_file == file_id
    assert {r["path"] for r in fake.state()["requests"]} >= {"/v1/files", "/v1/fine_tuning/jobs"}
    with pytest.raises(ValueError, match="api_version"):
        make_client(
            ProviderProfile(name="azure", base_url=fake.url, api_key=API_KEY, kind="azure"), allow=LOOPBACK
        )


def test_an_openai_profile_makes_a_plain_client(profile: ProviderProfile) -> None:
    with make_client(profile, allow=LOOPBACK, max_retries=5, timeout=3) as client:
        assert type(client) is openai.OpenAI
        assert client.max_retries == 5
        assert str(client.base_url).rstrip("/") == profile.base_url


def test_a_request_becomes_the_sdks_method_argument(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    fake.configure(min_examples=1)
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "input": {"messages": [{"role": "user", "content": "hi"}]},
                "preferred_output": [{"role": "assistant", "content": "Hello!"}],
                "non_preferred_output": [{"role": "assistant", "content": "What."}],
            }
        ],
    )
    file_id = upload_file(client, path, "p.jsonl")
    wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    request = FineTuneRequest(
        model="gpt-4.1-mini",
        training_file=file_id,
        method="dpo",
        n_epochs=2,
        batch_size=8,
        learning_rate_multiplier=0.3,
        beta=0.5,
        suffix="s",
        seed=7,
        metadata={"build": "b"},
    )
    job = create_fine_tune(client, request)
    assert job.method is not None
    assert job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.model_dump() == {
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate_multiplier": 0.3,
        "beta": 0.5,
    }
    assert (job.seed, job.metadata, job.validation_file) == (7, {"build": "b"}, None)
    assert (job.model_extra or {}).get("user_provided_suffix") == "s"


def status_error(status: int) -> openai.APIStatusError:
    request = httpx2.Request("GET", "http://127.0.0.1/v1/files")
    return openai.APIStatusError("x", response=httpx2.Response(status, request=request), body=None)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_errors_in_the_request_are_not_transient(status: int) -> None:
    assert not is_transient(status_error(status))


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_errors_the_provider_may_recover_from_are_transient(status: int) -> None:
    assert is_transient(status_error(status))


def test_connection_problems_are_transient_and_other_errors_are_not() -> None:
    request = httpx2.Request("GET", "http://127.0.0.1/v1/files")
    assert is_transient(openai.APIConnectionError(request=request))
    assert is_transient(openai.APITimeoutError(request=request))
    assert is_transient(TimeoutError("file still uploaded"))
    assert not is_transient(ValueError("no"))
    assert not is_transient(openai.OpenAIError("upload completed without a file"))
