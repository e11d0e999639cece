"""The core is pure: standard library, msgspec, tiktoken, tokenizers, jinja2, xxhash and numpy only; no web, queue or Redis imports."""

from __future__ import annotations

import ast
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
