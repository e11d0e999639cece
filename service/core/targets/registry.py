"""The one list of training targets. Nothing else names them: the CLI, the API and the workers
ask here. Adding a target is one module (a `Target` subclass and its `TARGET`) plus its line
below, its facts in `data/targets.toml`, and its tests."""

from __future__ import annotations

from service.core.targets import azure_openai, bedrock_nova, fireworks, openai, together, vertex_gemini
from service.core.targets.base import Target, all_facts

_TARGETS: tuple[Target, ...] = (
    openai.TARGET,
    azure_openai.TARGET,
    together.TARGET,
    fireworks.TARGET,
    vertex_gemini.TARGET,
    bedrock_nova.TARGET,
)
TARGETS: dict[str, Target] = {t.name: t for t in _TARGETS}
DEFAULT = "openai"


class UnknownTarget(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown target {name!r}; known: {', '.join(names())}")
        self.name = name


def gathered() -> str:
    """When the targets' facts were gathered (`data/targets.toml`)."""
    return str(all_facts().get("gathered", ""))


def names() -> tuple[str, ...]:
    return tuple(TARGETS)


def get(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(name) from None


def ordered(selected: list[str]) -> list[Target]:
    """The selected targets once each, in the registry's order (the order files are written)."""
    wanted = set(selected)
    for name in wanted:
        get(name)
    return [t for t in _TARGETS if t.name in wanted]


def owner(artifact_name: str) -> Target | None:
    """The target whose JSONL file an artifact is, by the target's own naming."""
    for t in _TARGETS:
        if t.owns(artifact_name):
            return t
    return None


def upload_target(built: list[str], provider_kind: str) -> Target | None:
    """Which of a build's targets to upload to a provider of `provider_kind` (openai, azure): the
    one made for that kind, else the first built target that uploads; None when none uploads."""
    uploading = [t for t in ordered(built) if t.uploads]
    for t in uploading:
        if t.provider_kind == provider_kind:
            return t
    return uploading[0] if uploading else None
