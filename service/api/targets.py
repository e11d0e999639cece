"""GET /v1/targets: the training targets a build recipe may name in `outputs.targets`, from the
registry (`service.core.targets.registry`), each with its kinds, limits and whether it uploads."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api.errors import problems
from service.api.schemas import TargetEntry, TargetLimits, TargetList, TargetRule
from service.core.targets import registry


@get("/targets", operation_id="listTargets", tags=["builds"], sync_to_thread=False, responses=problems(401))
def list_targets(tenant: NamedDependency[str]) -> TargetList:
    """Every training target: its dataset kinds, its rules with their problem codes, its limits
    (with their sources and the date they were gathered), and whether tuneset uploads its files."""
    items = []
    for t in registry.TARGETS.values():
        f = t.facts
        items.append(
            TargetEntry(
                name=t.name,
                platform=f.platform,
                kinds=sorted(t.kinds),
                uploads=t.uploads,
                provider_kind=t.provider_kind,
                files=t.file_names("train", 1)[0],
                limits=TargetLimits(
                    min_examples=f.min_examples,
                    max_examples=f.max_examples,
                    max_tokens_per_example=f.max_tokens_per_example or None,
                    max_tokens_per_model=f.max_tokens_per_model,
                    model_limit=f.max_tokens_per_example == 0,
                    max_file_bytes=f.max_file_bytes,
                    encoding=f.encoding,
                    reserved_strings=list(f.reserved_strings),
                ),
                token_counting=t.token_counting,
                rules=[TargetRule(code=r.code, says=r.says) for r in t.rules],
                sources=list(f.sources),
                notes=list(f.notes),
                gathered=str(registry.gathered()),
                upload_hint=t.upload_hint,
            )
        )
    return TargetList(items=items)
