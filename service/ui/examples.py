"""The example browser: a dataset's lines with their problems, and one line's token-level
training view for a provider model, a chat template or a model profile, before and after the
recipe's fixes.

It is a client of the browse routes (GET /v1/datasets/{id}/examples, …/examples/{line},
…/examples/{line}/view, /v1/models, /v1/templates, the dataset's batches), called in process
with the signed-in key (`api_client`), so it shows exactly what they answer to that key: the
highlighted tokens are the view's own `trained` segments, which /v1/inspect answers alike.

The recipe is the query: `target` (`model:NAME`, `template:NAME` or `profile:NAME`), `policies`
(`CODE=ACTION` items separated by spaces or commas, as `tuneset build -p` takes them),
`train_on` and `system_prompt`. Links from a build report carry the build's model and policies.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import anyio.to_thread
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect

from service.api import Services
from service.api.errors import ApiProblem
from service.api.profiles import load_profile
from service.api.schemas import (
    BatchPage,
    BuildStarted,
    Dataset,
    ExamplePage,
    InspectView,
    ModelList,
    StoredExample,
    TemplateList,
)
from service.core import pipeline
from service.core.problems import CODES
from service.ui.api_client import api_get, api_post, decoded, problem_of
from service.ui.render import html
from service.ui.session import Form, same_origin
from service.ui.tokens import view_tokens

Text = Annotated[str | None, QueryParameter(max_length=2000)]
TARGET = re.compile(r"^(model|template|profile):(.{1,200})$")
OUTCOMES = ["clean", "kept", "fixed", "dropped", "failed"]


class Recipe:
    """The page's recipe query, as the API's parameters and back as the page's own."""

    def __init__(
        self, target: str | None, policies: str | None, train_on: str | None, system_prompt: str | None = None
    ) -> None:
        self.target = target or f"model:{pipeline.DEFAULT_MODEL}"
        found = TARGET.match(self.target)
        if found is None:
            raise ApiProblem(400, "invalid-target", "target is model:NAME, template:NAME or profile:NAME")
        self.kind, self.name = found.group(1), found.group(2)
        self.policies = " ".join((policies or "").replace(",", " ").split())
        self.train_on = train_on if train_on in ("all", "last") else "all"
        self.system_prompt = system_prompt or ""

    def recipe_params(self, *, view: bool = False) -> list[tuple[str, str]]:
        """The API's recipe parameters; a template is only a view's (a recipe validates for a
        model or a profile, so the fixes are then the default model's)."""
        params: list[tuple[str, str]] = []
        if self.kind != "template" or view:
            params.append((self.kind, self.name))
        params += [("policy", p) for p in self.policies.split()]
        if self.train_on != "all":
            params.append(("train_on", self.train_on))
        if self.system_prompt:
            params.append(("system_prompt", self.system_prompt))
        return params

    def query(self) -> dict[str, str]:
        out = {"target": self.target}
        if self.policies:
            out["policies"] = self.policies
        if self.train_on != "all":
            out["train_on"] = self.train_on
        if self.system_prompt:
            out["system_prompt"] = self.system_prompt
        return out


async def _targets(request: Request[Any, Any, Any]) -> dict[str, list[Any]]:
    """What the switcher offers: each model with the names that resolve to it (an alias such as
    the default `gpt-4o-mini` selects its model), the built-in templates, the tenant's profiles."""
    models = decoded(await api_get(request, "/v1/models"), ModelList)
    templates = decoded(await api_get(request, "/v1/templates"), TemplateList)
    return {
        "model": [{"name": m.name, "names": [m.name, *m.aliases]} for m in models.items],
        "template": [t.name for t in templates.items if t.kind == "builtin"],
        "profile": [t.name for t in templates.items if t.kind == "profile"],
    }


def _qs(values: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


@get("/datasets/{dataset_id:str}/examples", include_in_schema=False)
async def examples_page(
    request: Request[Any, Any, Any],
    dataset_id: FromPath[str],
    tenant: NamedDependency[str],
    code: Text = None,
    batch_id: Text = None,
    outcome: Text = None,
    q: Text = None,
    target: Text = None,
    policies: Text = None,
    train_on: Text = None,
    system_prompt: Text = None,
    cursor: Text = None,
) -> Response[str]:
    """A page of the dataset's lines (50), filtered by problem code, batch, outcome and text."""
    recipe = Recipe(target, policies, train_on, system_prompt)
    outcome = outcome if outcome in OUTCOMES else None  # the form's "any" is empty
    dataset = decoded(await api_get(request, f"/v1/datasets/{dataset_id}"), Dataset)
    batches = decoded(await api_get(request, f"/v1/datasets/{dataset_id}/batches"), BatchPage)
    filters = {"code": code, "batch_id": batch_id, "outcome": outcome, "q": q}
    params = [(k, str(v)) for k, v in filters.items() if v]
    params += recipe.recipe_params()
    if cursor:
        params.append(("cursor", cursor))
    page = decoded(await api_get(request, f"/v1/datasets/{dataset_id}/examples", params), ExamplePage)
    here = {**filters, **recipe.query()}
    return html(
        "examples.html",
        tenant=tenant,
        nav="datasets",
        dataset=dataset,
        batches=batches.items,
        page=page,
        filters=filters,
        recipe=recipe,
        targets=await _targets(request),
        codes=sorted(CODES),
        outcomes=OUTCOMES,
        line_query=_qs(recipe.query()),
        next_query=_qs({**here, "cursor": page.next_cursor}) if page.next_cursor else None,
    )


async def _view(
    request: Request[Any, Any, Any],
    services: Services,
    tenant: str,
    path: str,
    recipe: Recipe,
    fixed: bool,
    window: int = 0,
) -> dict[str, Any]:
    """One training view as the page draws it, or the problem the API answered instead."""
    params = recipe.recipe_params(view=True)
    if fixed:
        params += [("fixed", "true"), ("window", str(window))]
    response = await api_get(request, f"{path}/view", params)
    if response.status_code >= 400:
        return {"problem": problem_of(response), "fixed": fixed}
    view = decoded(response, InspectView)
    profile = None
    if recipe.kind == "profile":
        profile = await anyio.to_thread.run_sync(load_profile, services, tenant, recipe.name)
    return {"view": view, "segments": view_tokens(view, profile), "fixed": fixed, "problem": None}


@get("/datasets/{dataset_id:str}/examples/{line:int}", include_in_schema=False)
async def example_page(
    request: Request[Any, Any, Any],
    dataset_id: FromPath[str],
    line: FromPath[int],
    tenant: NamedDependency[str],
    services: NamedDependency[Services],
    target: Text = None,
    policies: Text = None,
    train_on: Text = None,
    system_prompt: Text = None,
    show: Literal["both", "before", "after"] = "both",
) -> Response[str]:
    """One line: its messages, problems and fixes, and its training view as stored (before the
    fixes) and as the recipe's fixes leave it (after), each window of a split line its own view."""
    recipe = Recipe(target, policies, train_on, system_prompt)
    dataset = decoded(await api_get(request, f"/v1/datasets/{dataset_id}"), Dataset)
    path = f"/v1/datasets/{dataset_id}/examples/{line}"
    stored = decoded(await api_get(request, path, recipe.recipe_params()), StoredExample)
    views = []
    if show in ("both", "before"):
        views.append(await _view(request, services, tenant, path, recipe, fixed=False))
    if show in ("both", "after") and (stored.changes or show == "after" or stored.outputs != 1):
        for window in range(max(stored.outputs, 1)):
            views.append(await _view(request, services, tenant, path, recipe, True, window))
    messages = _messages(stored.example)
    return html(
        "example.html",
        tenant=tenant,
        nav="datasets",
        dataset=dataset,
        stored=stored,
        messages=messages,
        views=views,
        recipe=recipe,
        targets=await _targets(request),
        show=show,
        line_query=_qs(recipe.query()),
        previous=line - 1 if line > 1 else None,
        next=line + 1 if line < dataset.examples else None,
    )


def _messages(example: Any) -> list[dict[str, str]]:
    """The stored example's messages as (role, text) for reading (DPO: the prompt, then both replies)."""
    if not isinstance(example, dict):
        return []
    out: list[dict[str, str]] = []

    def add(items: Any, label: str = "") -> None:
        for m in items or []:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            text = "" if content is None else str(content)
            if m.get("tool_calls"):
                text += ("\n" if text else "") + f"[tool calls: {m['tool_calls']}]"
            role = str(m.get("role", "?")) + (f" ({label})" if label else "")
            if m.get("weight") == 0:
                role += ", weight 0"
            out.append({"role": role, "text": text})

    if "messages" in example:
        add(example["messages"])
    elif isinstance(example.get("input"), dict):
        add(example["input"].get("messages"))
        add(example.get("preferred_output"), "preferred")
        add(example.get("non_preferred_output"), "non-preferred")
    return out


@post("/datasets/{dataset_id:str}/builds", include_in_schema=False, guards=[same_origin], status_code=303)
async def start_build(request: Request[Any, Any, Any], dataset_id: FromPath[str], data: Form) -> Redirect:
    """The dataset page's Build button: startBuild with the form's model and policies (a 4xx
    problem is shown as a page), then the new job's page, which follows its progress."""
    recipe = Recipe(data.get("target"), data.get("policies"), data.get("train_on"), data.get("system_prompt"))
    body: dict[str, Any] = {recipe.kind: recipe.name} if recipe.kind == "model" else {}
    if recipe.kind != "model":
        raise ApiProblem(422, "invalid-recipe", "a build from this page names a provider model")
    policies = dict(p.split("=", 1) for p in recipe.policies.split() if "=" in p)
    if len(policies) != len(recipe.policies.split()):
        raise ApiProblem(422, "invalid-recipe", "policies are CODE=ACTION items, space-separated")
    body.update({"policies": policies} if policies else {})
    body.update({"system_prompt": recipe.system_prompt} if recipe.system_prompt else {})
    body.update({"train_on": recipe.train_on} if recipe.train_on != "all" else {})
    started = decoded(await api_post(request, f"/v1/datasets/{dataset_id}/builds", body), BuildStarted)
    return Redirect(f"/ui/jobs/{started.job_id}", status_code=303)


route_handlers: list[HTTPRouteHandler] = [examples_page, example_page, start_build]
