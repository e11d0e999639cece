"""openapi.yaml at the repository root is generated from the app; this fails when they drift.

Regenerate with `uv run tuneset openapi > openapi.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.cli import openapi_yaml

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "openapi.yaml is stale: run `uv run tuneset openapi > openapi.yaml`"

OPERATION_IDS = {
    "createDataset",
    "listDatasets",
    "getDataset",
    "deleteDataset",
    "pushBatch",
    "listBatches",
    "startBuild",
    "getJob",
    "listJobs",
    "cancelJob",
    "streamJobEvents",
    "listArtifacts",
    "downloadArtifact",
    "inspectExample",
    "validateExamples",
    "startFineTune",
    "createProvider",
    "listProviders",
    "getProvider",
    "deleteProvider",
    "receiveProviderWebhook",
    "createSubscription",
    "listSubscriptions",
    "getSubscription",
    "enableSubscription",
    "deleteSubscription",
    "listDeliveries",
    "getDelivery",
    "retryDelivery",
    "createModelProfile",
    "listModelProfiles",
    "getModelProfile",
    "deleteModelProfile",
    "listTemplates",
    "listTargets",
    "deleteBatch",
    "listExamples",
    "getExample",
    "viewExample",
    "listModels",
    "listKeys",
    "createKey",
    "revokeKey",
    "livez",
    "readyz",
    "metrics",
}


def _operations(schema: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        op["operationId"]: (method, path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }


def test_openapi_yaml_matches_the_app() -> None:
    committed = (ROOT / "openapi.yaml").read_text()
    generated = openapi_yaml()
    assert yaml.safe_load(committed) == yaml.safe_load(generated), REGENERATE
    assert committed == generated, REGENERATE


def test_every_operation_has_its_stable_id_and_problem_responses() -> None:
    schema = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    operations = _operations(schema)
    assert set(operations) == OPERATION_IDS
    for op_id, (_method, path, op) in operations.items():
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert set(response["content"]) == {"application/problem+json"}, (op_id, status)
        if op_id == "receiveProviderWebhook":  # the provider has no key: its signature authenticates it
            assert not op.get("security"), op_id
        elif path.startswith("/v1/"):
            assert op["security"] == [{"bearer": []}], op_id
            assert "401" in op["responses"], op_id
    assert "bearer" in schema["components"]["securitySchemes"]
