"""Which build files an upload sends is the registry's decision (the artifact's recorded target),
never a file name's: a `train-*.jsonl` of another target stays out of the OpenAI upload."""

from __future__ import annotations

from typing import Any

from service.core.targets import registry
from workers.providers import _parts


def _artifact(name: str, target: str | None, side: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "key": f"k/{name}", "size": 1, "sha256": "0" * 64}
    if target is not None:
        out |= {"target": target, "side": side or ("train" if "train" in name else "validation")}
    return out


def _build(*artifacts: dict[str, Any]) -> dict[str, Any]:
    return {"status": "succeeded", "result": {"artifacts": list(artifacts)}}


def test_only_the_uploading_targets_files_are_sent_whatever_their_names() -> None:
    build = _build(
        _artifact("report.json", None),
        _artifact("train-00000-of-00002.jsonl", "openai"),
        _artifact("train-00001-of-00002.jsonl", "openai"),
        _artifact("train-together.jsonl", "together", "train"),  # a name the old prefix rule took
        _artifact("together/train.jsonl", "together"),
        _artifact("validation.jsonl", "openai"),
        _artifact("bedrock-nova/validation.jsonl", "bedrock-nova"),
    )
    assert [a["name"] for a in _parts(build, "train", "openai")] == [
        "train-00000-of-00002.jsonl",
        "train-00001-of-00002.jsonl",
    ]
    assert [a["name"] for a in _parts(build, "validation", "openai")] == ["validation.jsonl"]


def test_an_azure_provider_takes_the_azure_files_when_built_else_openais() -> None:
    both = _build(
        _artifact("train.jsonl", "openai"),
        _artifact("azure-openai/train.jsonl", "azure-openai"),
    )
    assert [a["name"] for a in _parts(both, "train", "azure")] == ["azure-openai/train.jsonl"]
    assert [a["name"] for a in _parts(both, "train", "openai")] == ["train.jsonl"]
    only_openai = _build(_artifact("train.jsonl", "openai"))
    assert [a["name"] for a in _parts(only_openai, "train", "azure")] == ["train.jsonl"]


def test_nothing_is_sent_when_no_built_target_uploads() -> None:
    build = _build(
        _artifact("together/train.jsonl", "together"), _artifact("vertex-gemini/train.jsonl", "vertex-gemini")
    )
    assert _parts(build, "train", "openai") == []
    assert registry.upload_target(["together", "bedrock-nova"], "openai") is None


def test_builds_recorded_before_targets_are_read_by_the_targets_naming() -> None:
    old = _build(
        _artifact("train.jsonl", None), _artifact("validation.jsonl", None), _artifact("report.json", None)
    )
    assert [a["name"] for a in _parts(old, "train", "openai")] == ["train.jsonl"]
    assert [a["name"] for a in _parts(old, "validation", "openai")] == ["validation.jsonl"]
