"""deploy/compose.yaml: valid against the Compose Specification's JSON schema, and keeps the
promises of deploy/README.md (AOF on Redis, a healthcheck on every service, one image built
from deploy/Dockerfile, only the API on a published port). No Docker engine is needed.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")

REDIS_URL = "redis://redis:6379/0"
APP_SERVICES = ("api", "worker")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def load_schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = load_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)
    ]


def services() -> dict[str, dict[str, Any]]:
    found = load_compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}
    return {k: None if v is None else str(v) for k, v in env.items()}


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of every volume mount (short and long syntax)."""
    out: dict[str, str] = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source", ""), v["target"]
        out[target] = source
    return out


def test_schema_file_is_the_2019_09_compose_spec() -> None:
    schema = load_schema()
    assert schema["title"] == "Compose Specification"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft201909Validator
    jsonschema.Draft201909Validator.check_schema(schema)


def test_compose_file_matches_the_compose_spec() -> None:
    assert schema_errors(load_compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "redis", "healthcheck", "tset"), ["CMD", "true"]),
        (("services", "api", "depends_on", "redis", "condition"), "service_ready"),
        (("services", "worker", "restart_policy"), "always"),
        (("volumes", "data", "size"), "1G"),
    ],
)
def test_schema_rejects_a_broken_file(path: tuple[str, ...], value: Any) -> None:
    """The schema check is not vacuous: one wrong key or value anywhere fails it."""
    doc = copy.deepcopy(load_compose())
    node = doc
    for key in path[:-1]:
        if node.get(key) is None:  # `data:` with no options loads as None
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(doc) != []


def test_the_three_services() -> None:
    assert set(services()) == {"api", "worker", "redis"}


def test_redis_persists_with_aof_on_a_named_volume() -> None:
    doc = load_compose()
    redis = doc["services"]["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].split(".")[0] == "7"
    args = argv(redis["command"])
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    source = mounts(redis)["/data"]
    assert source in doc["volumes"], "Redis's /data must be a named volume"


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False), name
        test = argv(check["test"])
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert len(test) > 1, name


def test_the_healthchecks_probe_the_right_thing() -> None:
    svc = services()
    assert "/livez" in " ".join(argv(svc["api"]["healthcheck"]["test"]))
    assert "redis-cli ping" in " ".join(argv(svc["redis"]["healthcheck"]["test"]))
    worker_check = argv(svc["worker"]["healthcheck"]["test"])
    assert worker_check[:4] == ["CMD", "python", "-m", "workers.probe"]  # the heartbeat file's age
    assert environment(svc["worker"])["TUNESET_WORKER_HEARTBEAT_FILE"], "the probe needs the file"


def test_api_and_worker_build_from_deploy_dockerfile() -> None:
    for name in APP_SERVICES:
        build = services()[name]["build"]
        assert isinstance(build, dict), name
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        dockerfile = (context / build["dockerfile"]).resolve()
        assert dockerfile == DEPLOY / "Dockerfile", name
        assert dockerfile.is_file()
    assert services()["api"]["image"] == services()["worker"]["image"], "one image for both"


def test_the_commands() -> None:
    svc = services()
    assert argv(svc["api"]["command"]) == ["tuneset", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert argv(svc["worker"]["command"]) == ["tuneset", "worker"]


def test_only_the_api_publishes_a_port() -> None:
    for name, service in services().items():
        assert service.get("network_mode") != "host", name
        if name != "api":
            assert not service.get("ports"), f"{name} must not publish a port"
    ports = services()["api"]["ports"]
    assert len(ports) == 1
    port = ports[0]
    target = str(port["target"]) if isinstance(port, dict) else str(port).split(":")[-1]
    assert target.split("/")[0] == "8000"


def test_api_and_worker_share_redis_and_the_blob_store() -> None:
    doc = load_compose()
    sources = set()
    for name in APP_SERVICES:
        service = doc["services"][name]
        env = environment(service)
        assert env["TUNESET_REDIS_URL"] == REDIS_URL, name
        assert env["TUNESET_DATA_DIR"] == "/data", name
        source = mounts(service)["/data"]
        assert source in doc["volumes"], f"{name}: /data must be a named volume"
        sources.add(source)
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert len(sources) == 1, "the API and the workers must see the same blob store"
    assert sources.isdisjoint(mounts(doc["services"]["redis"]).values())


def test_every_service_restarts_unless_stopped() -> None:
    for name, service in services().items():
        assert service.get("restart") == "unless-stopped", name


def test_no_unescaped_dollar_in_shell_healthchecks() -> None:
    """Compose interpolates `$`; a shell variable in a healthcheck must be written `$$`."""
    for name, service in services().items():
        for arg in argv(service["healthcheck"]["test"]):
            assert "$" not in arg.replace("$$", ""), name
