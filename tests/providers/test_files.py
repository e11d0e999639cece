"""Uploads through `upload_file` and `wait_processed`: the Files API below the limit, the
Uploads API above it, and what the provider says about a bad file."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import openai
import pytest

from service.providers.client import ProviderFileRejected, find_file, upload_file, wait_processed
from service.providers.fake import FakeProvider
from tests.providers.conftest import chat_examples, write_jsonl


def files_named(fake: FakeProvider, filename: str) -> list[dict[str, object]]:
    return [f for f in fake.state()["files"] if f["filename"] == filename]


def test_a_small_file_goes_through_the_files_api_and_is_processed(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", chat_examples(12))
    file_id = upload_file(client, path, "build-1-train.jsonl")
    file = wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    assert (file.id, file.status, file.bytes, file.purpose) == (
        file_id,
        "processed",
        path.stat().st_size,
        "fine-tune",
    )
    [stored] = files_named(fake, "build-1-train.jsonl")
    assert stored["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [r["path"] for r in fake.state()["requests"][:1]] == ["/v1/files"]
    assert client.files.content(file_id).content == path.read_bytes()


def test_a_large_file_goes_through_the_uploads_api_in_parallel_parts(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", chat_examples(30))
    size = path.stat().st_size
    assert size > 2048
    fake.add_fault("POST /v1/uploads/*/parts", delay_s=0.1, times=None)
    started = time.monotonic()
    file_id = upload_file(client, path, "big.jsonl", single_file_limit=1024, part_size=256, parallel=4)
    elapsed = time.monotonic() - started
    parts = math.ceil(size / 256)
    assert elapsed < parts * 0.1 / 2, "parts were not sent in parallel"  # 4 at a time: about a quarter
    state = fake.state()
    [upload] = state["uploads"]
    assert (upload["status"], upload["bytes"], upload["file_id"]) == ("completed", size, file_id)
    assert sum(r["path"].endswith("/parts") and r["status"] == 200 for r in state["requests"]) == parts
    assert not any(r["path"] == "/v1/files" for r in state["requests"])
    [stored] = files_named(fake, "big.jsonl")
    assert stored["md5"] == upload["md5_given"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert wait_processed(client, file_id, timeout_s=5, poll_s=0.02).status == "processed"


def test_the_provider_checks_md5_and_byte_count_on_complete(client: openai.OpenAI) -> None:
    data = b'{"a": 1}\n' * 100
    upload = client.uploads.create(
        bytes=len(data), filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    first = client.uploads.parts.create(upload.id, data=data[:500])
    second = client.uploads.parts.create(upload.id, data=data[500:])
    with pytest.raises(openai.BadRequestError) as wrong_md5:
        client.uploads.complete(
            upload.id, part_ids=[first.id, second.id], md5=hashlib.md5(b"other").hexdigest()
        )
    assert wrong_md5.value.code == "md5_mismatch"
    with pytest.raises(openai.BadRequestError) as missing_part:
        client.uploads.complete(upload.id, part_ids=[first.id])
    assert missing_part.value.code == "bytes_mismatch"
    assert "(500)" in missing_part.value.message
    done = client.uploads.complete(
        upload.id, part_ids=[first.id, second.id], md5=hashlib.md5(data).hexdigest()
    )
    assert done.status == "completed"
    assert done.file is not None
    assert done.file.bytes == len(data)
    with pytest.raises(openai.BadRequestError):  # a completed upload takes no more parts
        client.uploads.parts.create(upload.id, data=b"more")


def test_a_failed_upload_is_cancelled(fake: FakeProvider, client: openai.OpenAI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", chat_examples(12))
    fake.add_fault("POST /v1/uploads/*/complete", status=400, message="refused by the test")
    with pytest.raises(openai.BadRequestError, match="refused by the test"):
        upload_file(client, path, "x.jsonl", single_file_limit=100, part_size=400)
    [upload] = fake.state()["uploads"]
    assert upload["status"] == "cancelled"
    assert fake.state()["files"] == []


def test_the_provider_enforces_its_size_limits(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    fake.configure(max_file_bytes=1000, max_part_bytes=300)
    path = write_jsonl(tmp_path / "train.jsonl", chat_examples(12))
    with pytest.raises(openai.APIStatusError) as too_big:
        upload_file(client, path, "x.jsonl")  # our limit is the real 512 MB, the provider's is lower
    assert too_big.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as part_too_big:
        upload_file(client, path, "x.jsonl", single_file_limit=1000, part_size=400)
    assert part_too_big.value.status_code == 413
    file_id = upload_file(client, path, "x.jsonl", single_file_limit=1000, part_size=300)
    assert wait_processed(client, file_id, timeout_s=5, poll_s=0.02).bytes == path.stat().st_size


def test_a_file_without_roles_is_rejected_with_the_providers_message(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    examples = chat_examples(120)
    del examples[99]["messages"][1]["role"]
    file_id = upload_file(client, write_jsonl(tmp_path / "bad.jsonl", examples), "bad.jsonl")
    with pytest.raises(ProviderFileRejected) as rejected:
        wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    assert (
        rejected.value.message
        == "Invalid file format. Example 100, message 2 Discriminator 'role' is missing in value"
    )
    assert (rejected.value.code, rejected.value.file_id) == ("invalid_file", file_id)


def test_too_few_examples_are_rejected_through_the_uploads_path_too(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "few.jsonl", chat_examples(7))
    file_id = upload_file(client, path, "few.jsonl", single_file_limit=100, part_size=256)
    with pytest.raises(ProviderFileRejected) as rejected:
        wait_processed(client, file_id, timeout_s=5, poll_s=0.02)
    assert str(rejected.value) == "Training file has 7 example(s), but must have at least 10 examples"
    assert rejected.value.code == "invalid_n_examples"


def test_the_sdks_own_wait_for_processing_works_too(client: openai.OpenAI, tmp_path: Path) -> None:
    file_id = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
    assert (
        client.files.wait_for_processing(file_id, poll_interval=0.02, max_wait_seconds=5).status
        == "processed"
    )


def test_waiting_too_long_raises_timeout(fake: FakeProvider, client: openai.OpenAI, tmp_path: Path) -> None:
    fake.configure(processing_seconds=30)
    file_id = upload_file(client, write_jsonl(tmp_path / "t.jsonl", chat_examples(10)), "t.jsonl")
    with pytest.raises(TimeoutError, match="still uploaded"):
        wait_processed(client, file_id, timeout_s=0.2, poll_s=0.05)


def test_files_are_listed_found_and_deleted(
    fake: FakeProvider, client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", chat_examples(10))
    older = upload_file(client, path, "same.jsonl")
    newer = upload_file(client, path, "same.jsonl")
    other = upload_file(client, path, "other.jsonl")
    assert [f.id for f in client.files.list(purpose="fine-tune")] == [other, newer, older]
    assert [f.id for f in client.files.list(order="asc", limit=2)] == [older, newer, other]  # pages
    found = find_file(client, "same.jsonl", path.stat().st_size)
    assert found is not None
    assert found.id == newer
    assert find_file(client, "same.jsonl", 1) is None
    assert client.files.delete(newer).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(newer)
    assert {f["id"] for f in fake.state()["files"]} == {older, other}


def test_the_files_api_wants_jsonl_for_fine_tuning(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        client.files.create(file=("train.csv", b"a,b\n"), purpose="fine-tune")


def test_a_failed_part_stops_the_upload(fake: FakeProvider, client: openai.OpenAI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", chat_examples(30))
    fake.add_fault("POST /v1/uploads/*/parts", status=400, message="bad part")
    with pytest.raises(openai.BadRequestError, match="bad part"):
        upload_file(client, path, "big.jsonl", single_file_limit=1024, part_size=256, parallel=1)
    state = fake.state()
    sent = sum(r["path"].endswith("/parts") for r in state["requests"])
    assert math.ceil(path.stat().st_size / 256) > 2
    assert sent == 1  # one part at a time (parallel=1): none starts after the failed one
    assert [u["status"] for u in state["uploads"]] == ["cancelled"]
