"""The core is pure: standard library, msgspec, tiktoken, tokenizers, jinja2, xxhash and numpy only; no web, queue or Redis imports."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CORE = ROOT / "service" / "core"
ALLOWED_THIRD_PARTY = {
    "msgspec",
    "tiktoken",
    "tokenizers",
    "jinja2",
    "xxhash",
    "numpy",
}  # tokenizers, jinja2: model profiles


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_only_pure_modules(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY:
            continue
        assert name == "service.core" or name.startswith("service.core."), f"{path.name} imports {name}"


def test_the_core_has_modules() -> None:
    assert len(list(CORE.rglob("*.py"))) >= 10


@pytest.mark.parametrize(
    "path", sorted((ROOT / "service").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_service_never_imports_the_workers(path: Path) -> None:
    """The API enqueues tasks by name; only the workers import the service, never the reverse."""
    assert not [n for n in _imports(path) if n == "workers" or n.startswith("workers.")]


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


CLI_MODULES = ("service.cli", "service.remote_cli", "tuneset.client")


@pytest.mark.parametrize(
    "path", _modules("service/api") + _modules("service/ui"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_api_and_its_ui_never_import_the_cli_or_the_client(path: Path) -> None:
    """The CLIs (local and remote) and the Python client are clients of the API: the API, and the
    UI it serves, must not depend on them."""
    assert not [
        n for n in _imports(path) if n in CLI_MODULES or n.startswith(tuple(m + "." for m in CLI_MODULES))
    ]


@pytest.mark.parametrize("path", _modules("service/store"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_stores_never_import_the_webhook_sender(path: Path) -> None:
    """Stores record; sending is the workers' (through `service.webhooks.send`), never a store's."""
    assert "service.webhooks.send" not in _imports(path)


JOB_KEY = re.compile(r"tuneset:job|job:\{")


@pytest.mark.parametrize(
    "path",
    [p for p in _modules("service") + _modules("workers") if not p.is_relative_to(ROOT / "service" / "jobs")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_jobs_package_spells_job_keys(path: Path) -> None:
    """A job's Redis keys are `service.jobs.keys`'s alone: a key spelled elsewhere escapes the
    state machine (its expiry, its atomic transitions)."""
    assert not [line for line in path.read_text().splitlines() if JOB_KEY.search(line)]


@pytest.mark.parametrize(
    "path",
    [p for p in _modules("service") + _modules("workers") if p != ROOT / "service" / "queue.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_task_names_are_spelled_only_in_the_queue_module(path: Path) -> None:
    from service.queue import LANES

    text = path.read_text()
    assert not [name for name in LANES if f'"{name}"' in text]


def test_the_key_check_finds_a_spelled_key() -> None:
    assert JOB_KEY.search('r.hget(f"tuneset:job:{job_id}", "status")')
    assert JOB_KEY.search('P + f"job:{job_id}:events"')
    assert not JOB_KEY.search("jobs.get(job_id)")
