"""Fine-tuning jobs through `create_fine_tune` and `job_status`: the provider's progression,
events, checkpoints and results, and what it refuses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from service.providers.client import (
    FineTuneRequest,
    JobSnapshot,
    create_fine_tune,
    find_job,
    is_transient,
    job_status,
    upload_file,
    wait_processed,
)
from service.providers.fake import FakeProvider
from service.providers.fake_validate import check_file
from tests.providers.conftest import chat_examples, preference_examples, write_jsonl

ORDER = ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


def processed_file(client: openai.OpenAI, path: Path) -> str:
    file_id = upload_file(client, path, path.name)
    wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    return file_id


def follow(client: openai.OpenAI, job_id: str, timeout_s: float = 15) -> tuple[JobSnapshot, list[str]]:
    """Poll to a terminal state; the distinct statuses seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("succeeded", "failed", "cancelled"):
            return job_status(client, job_id), seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)


def test_a_supervised_job_runs_to_success(fake: FakeProvider, client: openai.OpenAI, tmp_path: Path) -> None:
    fake.configure(step_seconds=0.15)
    path = write_jsonl(tmp_path / "train.jsonl", chat_examples(20))
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_examples(10))
    request = FineTuneRequest(
        model="gpt-4o-mini-2024-07-18",
        training_file=processed_file(client, path),
        validation_file=processed_file(client, valid),
        suffix="support-bot",
        seed=42,
        n_epochs=4,
        batch_size=5,
        learning_rate_multiplier=0.5,
        metadata={"build": "job_123"},
    )
    job = create_fine_tune(client, request)
    assert (job.status, job.seed, job.metadata) == ("validating_files", 42, {"build": "job_123"})
    assert job.method is not None
    assert job.method.type == "supervised"
    snapshot, seen = follow(client, job.id)
    assert seen[-1] == "succeeded"
    assert seen == sorted(seen, key=ORDER.index)  # polling may miss a step, never reorder them
    assert snapshot.done
    assert snapshot.error is None
    assert snapshot.trained_tokens == check_file(path.read_bytes()).tokens * 4
    assert snapshot.fine_tuned_model == f"ft:gpt-4o-mini-2024-07-18:fake-org:support-bot:{job.id[-8:]}"
    messages = [e.message for e in snapshot.events]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages.index("Files validated, moving job to queued state") < messages.index(
        "Fine-tuning job started"
    )
    assert messages[-1] == "The job has successfully completed"
    assert sum(e.message.startswith("Step ") for e in snapshot.events) == 4
    assert [e.created_at for e in snapshot.events] == sorted(e.created_at for e in snapshot.events)
    assert [c.step for c in snapshot.checkpoints] == [8, 12, 16]  # the last three epochs, 4 steps each
    assert snapshot.checkpoints[-1].fine_tuned_model_checkpoint == f"{snapshot.fine_tuned_model}:ckpt-step-16"
    assert {"train_loss", "valid_loss"} <= set(snapshot.checkpoints[0].metrics)
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.hyperparameters.n_epochs == 4
    assert final.hyperparameters.batch_size == 5
    assert final.finished_at is not None
    [results] = final.result_files
    assert client.files.content(results).text.startswith("step,train_loss")
    found = find_job(client, "build", "job_123")
    assert found is not None
    assert found.id == job.id
    assert find_job(client, "build", "job_999") is None


def test_auto_hyperparameters_are_resolved_when_the_job_starts(client: openai.OpenAI, tmp_path: Path) -> None:
    training = processed_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)))
    job = create_fine_tune(client, FineTuneRequest(model="gpt-4o-mini", training_file=training))
    assert job.hyperparameters.n_epochs == "auto"
    snapshot, _ = follow(client, job.id)
    assert snapshot.status == "succeeded"
    assert client.fine_tuning.jobs.retrieve(job.id).hyperparameters.n_epochs == 10  # 100 // 10 examples


def test_a_dpo_job_takes_a_preference_file(client: openai.OpenAI, tmp_path: Path) -> None:
    training = processed_file(client, write_jsonl(tmp_path / "prefs.jsonl", preference_examples(12)))
    job = create_fine_tune(
        client,
        FineTuneRequest(model="gpt-4.1-mini", training_file=training, method="dpo", beta=0.2, n_epochs=1),
    )
    assert job.method is not None
    assert job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    snapshot, _ = follow(client, job.id)
    assert snapshot.status == "succeeded"
    assert snapshot.trained_tokens is not None
    assert snapshot.trained_tokens > 0


def test_a_chat_file_fails_a_dpo_job_with_the_providers_error(client: openai.OpenAI, tmp_path: Path) -> None:
    training = processed_file(client, write_jsonl(tmp_path / "chat.jsonl", chat_examples(12)))
    job = create_fine_tune(
        client, FineTuneRequest(model="gpt-4.1-mini", training_file=training, method="dpo")
    )
    snapshot, seen = follow(client, job.id)
    assert seen[-1] == "failed"
    assert not {"queued", "running"} & set(seen)
    assert snapshot.error is not None
    assert (snapshot.error.code, snapshot.error.param) == ("invalid_training_file", "training_file")
    assert snapshot.error.message == (
        f"Input file {training} is in the fine-tune-chat format, but the specified fine-tuning job is not "
        "using 'supervised' as the training method (provided method=dpo)."
    )
    assert snapshot.fine_tuned_model is None
    assert snapshot.events[-1].level == "error"


def test_a_job_can_be_cancelled_once(fake: FakeProvider, client: openai.OpenAI, tmp_path: Path) -> None:
    fake.configure(step_seconds=0.1)
    training = processed_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)))
    job = create_fine_tune(client, FineTuneRequest(model="gpt-4o-mini", training_file=training))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    time.sleep(0.2)  # no step moves it on afterwards
    assert job_status(client, job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def bad_request(client: openai.OpenAI, **kwargs: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(**kwargs)
    assert not is_transient(e.value)
    return e.value


def test_the_provider_refuses_bad_job_parameters(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    training = processed_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)))
    base: dict[str, Any] = {"model": "gpt-4o-mini", "training_file": training}
    long_suffix = bad_request(client, **base, suffix="x" * 65)
    assert (long_suffix.param, long_suffix.code) == ("suffix", "string_above_max_length")
    assert bad_request(client, **base, suffix="").param == "suffix"
    unknown = bad_request(client, model="gpt-4o-mini", training_file="file-nope")
    assert (unknown.param, unknown.code) == ("training_file", "invalid_training_file")
    assert bad_request(client, **base, validation_file="file-nope").param == "validation_file"
    assert bad_request(client, **base, seed=-1).param == "seed"
    assert bad_request(client, **base, metadata={f"k{i}": "v" for i in range(17)}).param == "metadata"
    epochs = bad_request(
        client, **base, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}
    )
    assert epochs.param == "method.supervised.hyperparameters.n_epochs"
    beta = bad_request(
        client, **base, method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}
    )
    assert beta.code == "unknown_parameter"
    assert (
        bad_request(client, **base, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}).code
        == "invalid_value"
    )
    assert fake.state()["jobs"] == []


def test_a_file_must_be_processed_before_a_job_uses_it(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    fake.configure(processing_seconds=30)
    pending = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
    assert bad_request(client, model="gpt-4o-mini", training_file=pending).code == "file_not_ready"
    fake.configure(processing_seconds=0)
    few = upload_file(client, write_jsonl(tmp_path / "few.jsonl", chat_examples(3)), "few.jsonl")
    refused = bad_request(client, model="gpt-4o-mini", training_file=few)
    assert refused.code == "invalid_training_file"
    assert "must have at least 10 examples" in refused.message


def test_beta_belongs_to_dpo() -> None:
    with pytest.raises(ValueError, match="beta"):
        FineTuneRequest(model="m", training_file="f", beta=0.1)


def test_jobs_list_newest_first_and_page(client: openai.OpenAI, tmp_path: Path) -> None:
    training = processed_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)))
    ids = [create_fine_tune(client, FineTuneRequest(model="m", training_file=training)).id for _ in range(3)]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # auto-pages past 2
