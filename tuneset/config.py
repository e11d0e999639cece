"""Where a client finds the service: TUNESET_URL and TUNESET_API_KEY, else a config file.

The file is TOML, `url = "..."` and `api_key = "..."`, at TUNESET_CONFIG or
`~/.config/tuneset/config.toml` (the platform's config directory, as click finds it). A variable
set in the environment wins over the file; without either the URL is `tuneset dev`'s.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click

DEFAULT_URL = "http://127.0.0.1:8000"


class ConfigError(Exception):
    """The config file cannot be read, or no API key is configured."""


@dataclass(frozen=True)
class Config:
    url: str
    api_key: str | None

    @classmethod
    def load(cls, url: str | None = None, api_key: str | None = None) -> Config:
        """The given values, else the environment's, else the config file's."""
        file = _read_file()
        return cls(
            url=(url or os.environ.get("TUNESET_URL") or str(file.get("url") or DEFAULT_URL)).rstrip("/"),
            api_key=api_key or os.environ.get("TUNESET_API_KEY") or _str_or_none(file.get("api_key")),
        )


def config_path() -> Path:
    given = os.environ.get("TUNESET_CONFIG")
    return Path(given) if given else Path(click.get_app_dir("tuneset")) / "config.toml"


def _read_file() -> dict[str, object]:
    path = config_path()
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


def _str_or_none(value: object) -> str | None:
    return str(value) if value else None
