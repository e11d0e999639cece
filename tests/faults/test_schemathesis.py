"""schemathesis over the OpenAPI document of a real `tuneset api` (with a real worker and the fake
provider), with real ids: every operation is reached beyond its 4xx validation, and no response
is a 5xx or outside the schema (status code, content type, headers, body).

The document is the one the app serves (`/schema/openapi.json`, generated from the app; the
contract test holds openapi.yaml equal to it). Before generating, the test makes one of each
resource over HTTP — a dataset with examples, a build that uploads to the fake provider and
fine-tunes, a provider, a webhook subscription and its deliveries, a model profile — and each
generated case gets those ids in its path most of the time (fresh ones for deletes), the real
API key, and bodies steered towards valid ones (a known model, the real provider, examples
that pass). Batches are JSONL, written by a serializer registered for the JSONL media types.
TUNESET_FAULT_SCHEMATHESIS_EXAMPLES sets the examples per operation (default 50; ≥ 500 locally).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.core.targets import registry as target_registry
from service.providers.fake import run_fake_provider
from service.run import stop, worker_command
from service.store.state import State
from tests.api.test_profiles_api import qwen_json
from tests.conftest import mtbench_conversations
from tests.faults.fault_helpers import auth, jsonl_of, wait_terminal
from tests.integration.test_sse_streams import api_process
from tests.integration.test_worker_faults import _start_worker

EXAMPLES = int(os.environ.get("TUNESET_FAULT_SCHEMATHESIS_EXAMPLES", "50"))
ONLY = set(filter(None, os.environ.get("TUNESET_FAULT_SCHEMATHESIS_OPS", "").split(",")))  # to debug
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
JSONL_TYPES = ("application/jsonl", "application/x-ndjson")
GOOD = mtbench_conversations()
RECEIVER = "http://127.0.0.1:9/hooks"  # nothing listens: deliveries fail and are recorded


@schemathesis.serializer(*JSONL_TYPES)
def _jsonl(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """A list is one JSON value per line; bytes and text go as they are (junk lines included)."""
    if isinstance(value, list):
        data = b"".join(json.dumps(v).encode() + b"\n" for v in value)
    elif isinstance(value, bytes):
        data = value
    else:
        data = str(value).encode()
    return data


class World:
    """The resources made before generating, and how each case's path parameters get real ids."""

    def __init__(self, http: httpx.Client, key: str, provider_url: str) -> None:
        self.http, self.key, self.provider_url = http, key, provider_url
        self.ids: dict[str, list[str]] = {}
        self.calls: Counter[str] = Counter()  # cases steered so far, per operation

    def post(self, path: str, status: int, **kwargs: Any) -> dict[str, Any]:
        r = self.http.post(path, headers={**auth(self.key), **kwargs.pop("headers", {})}, **kwargs)
        assert r.status_code == status, (path, r.status_code, r.text)
        body: dict[str, Any] = r.json()
        return body

    def dataset(self) -> str:
        ds = str(self.post("/v1/datasets", 201, json={"name": "contract", "kind": "chat"})["id"])
        self.batch(ds)
        return ds

    def batch(self, ds: str) -> str:
        pushed = self.post(
            f"/v1/datasets/{ds}/batches",
            201,
            content=jsonl_of(GOOD),
            headers={"Content-Type": "application/jsonl"},
        )
        return str(pushed["id"])

    def provider(self, name: str) -> dict[str, Any]:
        return self.post(
            "/v1/providers",
            201,
            json={
                "name": name,
                "base_url": self.provider_url,
                "api_key": "sk-contract",
                "webhook_secret": "whsec_" + "A" * 43 + "=",
            },
        )

    def subscription(self) -> str:
        return str(self.post("/v1/webhooks/subscriptions", 201, json={"url": RECEIVER})["id"])

    def profile(self, name: str) -> str:
        r = self.http.post("/v1/model-profiles", json=qwen_json(name), headers=auth(self.key))
        assert r.status_code in (200, 201), r.text
        return name

    def make(self, state: State) -> None:
        """One of each resource; the build uploads to the fake provider and fine-tunes there."""
        prov = self.provider("fake")
        sub = self.subscription()
        ds = self.dataset()
        started = self.post(
            f"/v1/datasets/{ds}/builds",
            202,
            json={
                "model": "gpt-4o-mini",
                "upload": {"provider": "fake"},
                "fine_tune": {"suffix": "contract"},
            },
        )
        jobs = [started["job_id"], started["upload_job_id"], started["fine_tune_job_id"]]
        failed = self.post(
            f"/v1/datasets/{ds}/builds",
            202,
            json={"model": "gpt-4o-mini", "split": {"validation_fraction": 0.9}},
        )
        done = wait_terminal(state, [*jobs, failed["job_id"]], timeout=120)
        assert [done[j]["status"] for j in jobs] == ["succeeded"] * 3, {j: done[j].get("error") for j in jobs}
        artifacts = [a["name"] for a in done[jobs[0]]["result"]["artifacts"]]
        deadline = time.monotonic() + 30
        while not (
            deliveries := self.http.get("/v1/webhooks/deliveries", headers=auth(self.key)).json()["items"]
        ):
            assert time.monotonic() < deadline, "no webhook delivery was recorded"
            time.sleep(0.2)
        self.ids = {
            "dataset_id": [ds],
            "line": ["1", "2", str(len(GOOD))],  # the dataset's first and last lines
            "job_id": [*jobs, failed["job_id"]],
            "artifact": artifacts,
            "provider": ["fake"],
            "provider_id": [str(prov["id"])],
            "sub_id": [sub],
            "delivery_id": [str(d["id"]) for d in deliveries],
            "profile": [self.profile("qwen-contract")],
        }

    def fresh(self, op: str) -> str:
        """A new resource for an operation that deletes (or cancels) the one it names."""
        if op == "deleteDataset":
            return self.dataset()
        if op == "deleteProvider":
            name = f"p{time.monotonic_ns()}"
            self.provider(name)
            return name
        if op == "deleteSubscription":
            return self.subscription()
        if op == "revokeKey":
            return str(self.post("/v1/keys", 201, json={"tenant": "other"})["id"])
        if op == "cancelJob":
            return str(self.post(f"/v1/datasets/{self.ids['dataset_id'][0]}/builds", 202, json={})["job_id"])
        assert op == "deleteModelProfile", op
        return self.profile(f"q{time.monotonic_ns()}")

    def pool(self, op: str, param: str) -> list[str]:
        if op == "startFineTune":  # the succeeded build and its upload: the jobs a fine-tune starts from
            return self.ids["job_id"][:2]
        if op == "downloadArtifact" and param == "job_id":  # the job the artifact names are of
            return self.ids["job_id"][:1]
        if param == "name":  # artifacts, providers and profiles all call theirs `name`
            kind = {"downloadArtifact": "artifact"}.get(op, "profile" if "Profile" in op else "provider")
            return self.ids[kind]
        return self.ids.get(param, [])


DELETES = {
    "deleteDataset",
    "deleteProvider",
    "deleteSubscription",
    "deleteModelProfile",
    "cancelJob",
    "revokeKey",
}


BROWSES = {"listExamples", "getExample", "viewExample"}
BROWSE_QUERY = {"limit", "outcome", "q", "train_on", "fixed", "train_eot"}


def chance(rng: random.Random, tenths: int) -> bool:
    """True `tenths` times in ten (from a Random seeded per case: Hypothesis's own draws lean
    towards their simplest values, which would make every case alike)."""
    return rng.random() < tenths / 10


def drawn_for(op: str, draw: Callable[[st.SearchStrategy[Any]], Any]) -> dict[str, Any]:
    """What steering may put in a body, drawn before any choice is made: Hypothesis needs the
    same draws for the same case, and the choices come from a Random outside its control."""
    if op == "pushBatch":
        junk = st.dictionaries(st.text(max_size=8), st.text(max_size=8))
        return {
            "good": draw(st.lists(st.sampled_from(GOOD), min_size=1, max_size=20)),
            "mixed": draw(st.lists(st.one_of(st.sampled_from(GOOD), junk), min_size=1, max_size=20)),
        }
    if op in ("createProvider", "createKey"):
        return {"name": draw(st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z"))}
    if op in ("inspectExample", "validateExamples"):
        return {"example": draw(st.sampled_from(GOOD))}
    if op == "startBuild":  # training targets from the registry (every one takes chat datasets)
        return {"targets": draw(st.lists(st.sampled_from(target_registry.names()), min_size=1, max_size=4))}
    return {}


def steer(
    op: str, case: schemathesis.Case[Any], world: World, draw: Callable[[st.SearchStrategy[Any]], Any]
) -> dict[str, str]:
    """Real ids and, half the time, a body that passes validation; the headers to send (the real
    key, nine times in ten)."""
    drawn = drawn_for(op, draw)
    world.calls[op] += 1  # a Random of its own per case: Hypothesis's draws lean to their simplest
    rng = random.Random(f"{op}:{world.calls[op]}")  # values, so a seed drawn from them repeats
    headers = auth(world.key) if chance(rng, 9) else {}
    if op == "deleteBatch" and chance(rng, 8):  # a fresh batch of its own dataset: the pair must match
        ds = world.dataset()
        case.path_parameters = {"dataset_id": ds, "batch_id": world.batch(ds)}
    for param in list(case.path_parameters or {}):
        if op == "deleteBatch" or not chance(rng, 8):
            continue  # the generated value: unknown ids, odd characters
        if op in DELETES:  # never the shared resource; a profile costs a tokenizer upload: rarer
            if op != "deleteModelProfile" or chance(rng, 3):
                case.path_parameters[param] = world.fresh(op)
        elif pool := world.pool(op, param):
            case.path_parameters[param] = rng.choice(pool)
    if not chance(rng, 6):
        return headers
    body = case.body if isinstance(case.body, dict) else None
    if op == "pushBatch" and case.media_type in JSONL_TYPES:
        case.body = drawn["good"] if chance(rng, 7) else drawn["mixed"]
    elif op == "pushBatch" and body is not None:
        case.body = {"examples": drawn["good"]}
    elif op == "startBuild" and body is not None:
        kept = {k: v for k, v in body.items() if k in ("train_on", "system_prompt", "shard_size", "dedupe")}
        case.body = {**kept, "model": "gpt-4o-mini"}
        if chance(rng, 5):
            case.body["outputs"] = {"targets": drawn["targets"], "report": {}}
    elif op == "startFineTune" and body is not None:
        known = ("suffix", "seed", "method", "hyperparameters", "metadata")
        case.body = {**{k: v for k, v in body.items() if k in known}, "provider": "fake"}
    elif op == "createProvider" and body is not None:
        api_key = body.get("api_key") or "sk-x"
        case.body = {"name": drawn["name"], "base_url": world.provider_url, "api_key": api_key}
    elif op == "createKey" and body is not None:
        case.body = {"tenant": drawn["name"], "admin": False}
    elif op == "createSubscription" and body is not None:
        case.body = {"url": RECEIVER, **({"event_types": ["build.succeeded"]} if chance(rng, 5) else {})}
    elif op == "createModelProfile" and chance(rng, 4):  # a tokenizer upload each: kept rarer (1 in 4)
        case.body, case.media_type = qwen_json(f"g{time.monotonic_ns()}"), "application/json"
    elif op in BROWSES and chance(rng, 8):  # the filters and targets a page or view answers 2xx for
        case.query = {k: v for k, v in (case.query or {}).items() if k in BROWSE_QUERY}
    elif op in ("inspectExample", "validateExamples") and body is not None:
        example = drawn["example"]
        case.body = {"example": example} if op == "inspectExample" else {**body, "examples": [example]}
    return headers


def explore(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    op: str,
    world: World,
    base: str,
    seen: Counter[int],
    failures: list[str],
) -> float:
    """EXAMPLES generated cases of one operation, steered, sent and checked; failures are kept,
    not raised, so every operation is explored and the figure counts them all."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), data=st.data())
    def run(case: schemathesis.Case[Any], data: st.DataObject) -> None:
        headers = steer(op, case, world, data.draw)
        try:
            response = case.call(base_url=base, headers=headers, timeout=30)
        except Exception as e:
            failures.append(f"{op}: no answer: {e!r}"[:400])
            return
        seen[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, FailureGroup) as e:
            failures.append(f"{op} {response.status_code}: {e}\n{case.as_curl_command()}"[:1500])
        if os.environ.get("TUNESET_FAULT_SCHEMATHESIS_DEBUG") and response.status_code >= 400:
            print(op, response.status_code, case.body, response.text[:300])

    start = time.monotonic()
    run()
    return time.monotonic() - start


@contextlib.contextmanager
def service(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The API (base URL), a worker, the fake provider (base URL), sharing one secret key."""
    env = {
        "secret_key": Fernet.generate_key().decode(),
        "webhook_allow_hosts": '["127.0.0.1"]',
        "webhook_retry_schedule_s": "[3600]",
        "provider_poll_interval_s": "0.2",
    }
    with (
        run_fake_provider(step_seconds=0.05, processing_seconds=0.05, min_examples=10) as fake,
        api_process(redis_url, tmp_path, **env) as api,
    ):
        worker_env = {
            **os.environ,
            "TUNESET_REDIS_URL": redis_url,
            "TUNESET_DATA_DIR": str(tmp_path / "data"),
            **{f"TUNESET_{k.upper()}": v for k, v in env.items()},
        }
        from service.settings import Settings

        settings = Settings(redis_url=redis_url, data_dir=tmp_path / "data")
        worker = _start_worker(
            settings, tmp_path / "worker.log", env=worker_env, command=worker_command(settings)
        )
        try:
            yield api.base, fake.base_url
        finally:
            stop(worker)


@pytest.mark.slow
def test_every_operation_answers_within_its_schema(redis_url: str, tmp_path: Path) -> None:
    state = State.from_url(redis_url)
    state.r.flushdb()
    key = state.create_key("acme", admin=True)  # the key operations are admin-only
    figures: dict[str, Counter[int]] = {}
    took_s: dict[str, float] = {}
    failures: list[str] = []
    started = time.monotonic()
    with (
        service(redis_url, tmp_path) as (base, provider_url),
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        world = World(http, key, provider_url)
        world.make(state)
        setup_s = time.monotonic() - started
        schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            op = str(operation.definition.raw["operationId"])
            if ONLY and op not in ONLY:
                continue
            seen: Counter[int] = figures.setdefault(op, Counter())

            took_s[op] = explore(operation, op, world, base, seen, failures)
        logs = "".join(p.read_text() for p in tmp_path.glob("api-*.log"))
    took = time.monotonic() - started
    total = sum(sum(c.values()) for c in figures.values())
    server_errors = sum(n for c in figures.values() for s, n in c.items() if s >= 500)
    beyond = [op for op, c in figures.items() if any(200 <= s < 300 for s in c)]
    print(
        f"\nschemathesis: {len(figures)} operations, {EXAMPLES} examples each, {total} requests in {took:.0f} s (set-up {setup_s:.0f} s)"
    )
    for op, c in sorted(figures.items()):
        print(f"  {op:<26} {took_s[op]:5.1f} s  {dict(sorted(c.items()))}")
    print(
        f"5xx: {server_errors}; failed checks: {len(failures)}; operations with a 2xx: {len(beyond)}/{len(figures)}"
    )
    for f in failures[:10]:
        print("  " + f.replace("\n", "\n    "))
    assert not failures, f"{len(failures)} failed checks ({server_errors} 5xx):\n" + "\n".join(failures[:10])
    never = sorted(set(figures) - set(beyond) - {"receiveProviderWebhook"})  # a signed one: see its tests
    assert not never, f"operations never answered 2xx: {never}"
    assert "Traceback" not in logs, logs[-3000:]
