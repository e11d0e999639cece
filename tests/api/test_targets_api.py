"""GET /v1/targets and the recipe's `outputs.targets`, over HTTP against a real redis-server."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.core.targets import registry
from tests.api.test_api import Client, assert_problem, auth, enqueued, key, keys, make_dataset

__all__ = ["enqueued", "key", "keys"]


def test_list_targets_names_every_target_with_kinds_limits_and_upload(client: Client, key: str) -> None:
    r = client.get("/v1/targets", headers=auth(key))
    assert r.status_code == 200, r.text
    items = {t["name"]: t for t in r.json()["items"]}
    assert list(items) == ["openai", "azure-openai", "together", "fireworks", "vertex-gemini", "bedrock-nova"]
    assert {n for n, t in items.items() if t["uploads"]} == {"openai", "azure-openai"}
    assert items["bedrock-nova"]["kinds"] == ["chat"]
    assert items["together"]["kinds"] == ["chat", "preference"]
    assert items["vertex-gemini"]["limits"]["max_tokens_per_example"] == 131072
    assert items["azure-openai"]["limits"]["max_tokens_per_model"] == {"gpt-4.1-nano": 32768}
    assert items["fireworks"]["limits"]["min_examples"] == 3
    assert items["fireworks"]["limits"]["max_examples"] == 3_000_000
    assert "[EOS]" in items["bedrock-nova"]["limits"]["reserved_strings"]
    assert items["openai"]["files"] == "train.jsonl"
    assert items["together"]["files"] == "together/train.jsonl"
    for t in items.values():
        assert t["sources"]
        assert t["gathered"] == "2026-12-01"
        assert all(rule["code"].startswith(("target_", "too_", "over_", "special_")) for rule in t["rules"])
    assert client.get("/v1/targets").status_code == 401


def test_an_unknown_target_is_a_400_naming_the_known_ones(client: Client, key: str, enqueued: Any) -> None:
    ds = make_dataset(client, key)
    r = client.post(
        f"/v1/datasets/{ds}/builds", json={"outputs": {"targets": ["together", "nope"]}}, headers=auth(key)
    )
    body = assert_problem(r, 400)
    text = msgspec.json.encode(body).decode()
    assert "nope" in text
    for name in registry.names():
        assert name in text, text
    assert not enqueued


@pytest.mark.parametrize(
    ("kind", "targets", "status"),
    [
        ("preference", ["bedrock-nova"], 422),
        ("preference", ["together", "vertex-gemini"], 202),
        ("chat", ["bedrock-nova"], 202),
    ],
)
def test_targets_must_take_the_datasets_kind(
    client: Client, key: str, enqueued: Any, kind: str, targets: list[str], status: int
) -> None:
    ds = make_dataset(client, key, kind=kind)
    r = client.post(f"/v1/datasets/{ds}/builds", json={"outputs": {"targets": targets}}, headers=auth(key))
    if status == 202:
        assert r.status_code == 202, r.text
    else:
        body = assert_problem(r, status, "invalid-recipe")
        assert "bedrock-nova" in body["detail"]
        assert "preference" in body["detail"]


def test_upload_needs_a_target_that_uploads(client: Client, key: str, enqueued: Any) -> None:
    ds = make_dataset(client, key)
    body = {"outputs": {"targets": ["together", "bedrock-nova"]}, "upload": {"provider": "fake"}}
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/builds", json=body, headers=auth(key)), 422)
    assert "openai" in problem["detail"]
    assert "azure-openai" in problem["detail"]
