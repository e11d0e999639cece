"""GET /v1/models: the provider models the service knows (its model table, `service.core.models`)."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api import Services
from service.api.errors import problems
from service.api.schemas import KnownModel, ModelList


@get("/models", operation_id="listModels", tags=["tools"], sync_to_thread=False, responses=problems(401))
def list_models(services: NamedDependency[Services]) -> ModelList:
    """Every model of the table (built in, plus TUNESET_MODELS' entries), by name, with the
    aliases that resolve to it: what `model` may name in a recipe, /v1/validate or /v1/inspect.
    A fine-tuned model's name (`ft:BASE:...`) resolves to its base model's entry."""
    table = services.table
    aliases: dict[str, list[str]] = {}
    for alias, name in sorted(table.aliases.items()):
        aliases.setdefault(name, []).append(alias)
    return ModelList(
        items=[
            KnownModel(
                name=m.name,
                encoding=m.encoding,
                max_tokens=m.max_tokens,
                min_examples=m.min_examples,
                price_per_1m=m.price_per_1m,
                aliases=aliases.get(m.name, []),
            )
            for m in (table.models[n] for n in table.names())
        ]
    )
