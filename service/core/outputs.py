"""Which files a build writes: the `outputs` part of a build recipe.

Each member present selects that output; an absent (or null) member is not produced. A recipe
without `outputs` gets the provider JSONL and the report. A build that fails validation always
stores `report.json` whatever was selected, because that is where the failing lines are named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from service.core.packing import PackedSpec, TokenizedSpec
from service.core.targets.base import part_names

__all__ = [
    "JsonlOutput",
    "Outputs",
    "PackedSpec",
    "ReportOutput",
    "TokenizedSpec",
    "default_outputs",
    "part_names",
]

if TYPE_CHECKING:
    TargetName = str
else:  # the registry's names as an enum: the API answers 400 naming them, and OpenAPI lists them
    from service.core.targets.registry import names as _target_names

    TargetName = Literal[_target_names()]

FILES_API_LIMIT = 512 * 1024 * 1024  # the provider's single-file (Files API) limit, in bytes
DEFAULT_MAX_FILE_BYTES = 500 * 1024 * 1024  # a margin below it


class JsonlOutput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`train.jsonl` / `validation.jsonl` in the provider's format (chat, or DPO for preference data).

    A side larger than `max_file_bytes` is cut at line boundaries into
    `train-00000-of-00003.jsonl`, ... each within the limit (a single longer line gets a part of
    its own); a side that fits keeps the plain name."""

    max_file_bytes: Annotated[int, msgspec.Meta(ge=1024, le=FILES_API_LIMIT)] = DEFAULT_MAX_FILE_BYTES


class ReportOutput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`report.json` for machines and a self-contained `report.html` for people."""


class Outputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`targets` names training targets (`GET /v1/targets`), one set of JSONL files each:
    `openai` is what `openai_jsonl` writes (`train.jsonl`, ...), every other target writes under
    its own folder (`together/train.jsonl`, ...). Naming `openai` in both is the same output."""

    openai_jsonl: JsonlOutput | None = None
    targets: Annotated[list[TargetName], msgspec.Meta(max_length=16)] | None = None
    packed: PackedSpec | None = None
    tokenized: TokenizedSpec | None = None
    report: ReportOutput | None = None

    @property
    def empty(self) -> bool:
        return not self.targets and all(
            x is None for x in (self.openai_jsonl, self.packed, self.tokenized, self.report)
        )

    def target_names(self) -> list[str]:
        """Every target the outputs select: `openai` for `openai_jsonl`, then `targets`."""
        out = ["openai"] if self.openai_jsonl is not None else []
        return out + [t for t in self.targets or () if t not in out]


def default_outputs() -> Outputs:
    return Outputs(openai_jsonl=JsonlOutput(), report=ReportOutput())
