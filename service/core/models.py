"""The provider's model table, as data: encoding, per-example limit, price, minimum examples.

Prices and limits change and differ per provider (OpenAI, Azure, others), so they live in
`data/models.toml` and a deployment can replace or extend them with its own TOML file.
Names resolve from an exact snapshot, an alias (`gpt-4o-mini`), or a fine-tuned model name
(`ft:gpt-4.1-mini-2025-04-14:org:suffix:id`) to its base model; tiktoken's own mapping gets
`ft:` names wrong, so tuneset never asks it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from service.core.encodings import encoding_names

MODELS_ENV = "TUNESET_MODELS"


class ModelError(ValueError):
    """The model name is unknown."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    encoding: str
    max_tokens: int
    min_examples: int
    price_per_1m: float | None = None
    tools_func_init: int | None = None

    @property
    def func_init(self) -> int:
        """The cookbook's per-function overhead when counting tool definitions."""
        if self.tools_func_init is not None:
            return self.tools_func_init
        return 10 if self.encoding.startswith("cl100k") else 7


@dataclass(frozen=True)
class ModelTable:
    models: dict[str, ModelInfo]
    aliases: dict[str, str]

    def resolve(self, name: str) -> ModelInfo:
        key = name.strip()
        if key.startswith("ft:"):
            key = key[3:].split(":", 1)[0]
        key = self.aliases.get(key, key)
        info = self.models.get(key)
        if info is None:
            known = ", ".join(sorted([*self.models, *self.aliases]))
            raise ModelError(f"unknown model {name!r}; known: {known}")
        return info

    def names(self) -> list[str]:
        return sorted(self.models)


def _parse(doc: dict[str, Any], base: ModelTable | None = None) -> ModelTable:
    defaults = doc.get("defaults", {})
    entries = doc.get("models", {})
    if not isinstance(defaults, dict) or not isinstance(entries, dict):
        raise ModelError("a model table has a [defaults] table and [models.NAME] tables")
    models = dict(base.models) if base else {}
    aliases = dict(base.aliases) if base else {}
    for name, entry in entries.items():
        try:
            if not isinstance(entry, dict):
                raise TypeError("expected a table")
            models[name] = ModelInfo(
                name=name,
                encoding=str(entry["encoding"]),
                max_tokens=int(entry["max_tokens"]),
                min_examples=int(entry.get("min_examples") or defaults.get("min_examples") or 10),
                price_per_1m=None if entry.get("price_per_1m") is None else float(entry["price_per_1m"]),
                tools_func_init=None
                if entry.get("tools_func_init") is None
                else int(entry["tools_func_init"]),
            )
            names = entry.get("aliases", [])
            if not isinstance(names, list):
                raise TypeError("aliases must be a list of names")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"model table entry {name!r} is invalid: {e}") from e
        if models[name].encoding not in encoding_names():
            raise ModelError(
                f"model table entry {name!r} names encoding {models[name].encoding!r}; "
                f"known: {', '.join(encoding_names())}"
            )
        for alias in names:
            aliases[str(alias)] = name
    return ModelTable(models, aliases)


def extend(table: ModelTable, entries: dict[str, Any]) -> ModelTable:
    """`table` with `entries` (the shape of models.toml's `[models.NAME]` tables) added or replacing
    by name: how a provider profile makes its own deployments or models known."""
    return _parse({"models": entries}, table)


@cache
def builtin_table() -> ModelTable:
    text = resources.files("service.core.data").joinpath("models.toml").read_text("utf-8")
    return _parse(tomllib.loads(text))


def load_table(override: Path | None = None) -> ModelTable:
    """The built-in table, with entries from `override` (or $TUNESET_MODELS) replacing them by name."""
    path = override or (Path(os.environ[MODELS_ENV]) if os.environ.get(MODELS_ENV) else None)
    if path is None:
        return builtin_table()
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelError(f"cannot read model table {path}: {e}") from e
    return _parse(doc, builtin_table())
