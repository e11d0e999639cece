"""Browsing a dataset: its lines a page at a time, one line with its problems, one line's training view.

Lines are numbered 1.. across the dataset's batches in push order, as builds number them, so
deleting a batch moves the lines of later batches up. Problems and outcomes are those of the
recipe the request names with /v1/validate's parameters (`model` or `profile`, `policy`,
`system_prompt`, `train_on`): what validating the dataset's examples in one body reports, line
for line (`service.core.browse`). The cursor is opaque and bound to the dataset, the filters and
the recipe it was made with; any other use of it is 400 `invalid-cursor`. It holds a line
number: after a batch is deleted between two pages, the walk goes on from the same number, so
it skips the lines that moved up past it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, PathParameter, QueryParameter
from litestar.types import Dependencies

from service.api import Services
from service.api.errors import ApiProblem, not_found, problems
from service.api.schemas import (
    CODE_MAX,
    IDENT_MAX,
    LINE_MAX,
    SEARCH_MAX,
    ExampleItem,
    ExampleOutcome,
    ExamplePage,
    InspectView,
    ProblemItem,
    StoredExample,
)
from service.api.tools import (
    ModelQuery,
    PolicyQuery,
    ProfileQuery,
    SystemPromptQuery,
    TrainOnQuery,
    exclusive,
    inspect_view,
    validation_recipe,
)
from service.core.browse import BatchSpan, Browsed, Browser, Filters, Lines, Row, messages_of, preview
from service.core.formats import Format
from service.core.pipeline import Recipe
from service.core.problems import CODES
from service.store.blobs import BlobNotFound

CURSOR_RE = r"^ex_[0-9a-f]{9,24}$"  # "ex_", 8 hex digits binding it to its query, the line in hex
_FINGERPRINT = 8

Limit = Annotated[int, QueryParameter(ge=1, le=100, description="page size (at most 100)")]
Cursor = Annotated[
    str | None, QueryParameter(pattern=CURSOR_RE, description="next_cursor of the previous page")
]
Line = Annotated[int, PathParameter(ge=1, le=LINE_MAX, description="1-based, across the batches")]


def _fingerprint(dataset_id: str, query: dict[str, Any]) -> str:
    text = json.dumps([dataset_id, query], sort_keys=True)
    return hashlib.sha256(text.encode(), usedforsecurity=False).hexdigest()[:_FINGERPRINT]


def encode_cursor(dataset_id: str, query: dict[str, Any], line: int) -> str:
    return f"ex_{_fingerprint(dataset_id, query)}{line:x}"


def decode_cursor(cursor: str | None, dataset_id: str, query: dict[str, Any]) -> int:
    """The line a cursor goes on from (1 without one); 400 when it was made for another query."""
    if cursor is None:
        return 1
    body = cursor.removeprefix("ex_")
    if body[:_FINGERPRINT] != _fingerprint(dataset_id, query):
        raise ApiProblem(
            400,
            "invalid-cursor",
            "the cursor was made for another dataset, filter or recipe; start again without one",
        )
    return int(body[_FINGERPRINT:], 16)


def _lines(services: Services, tenant: str, dataset_id: str) -> tuple[Lines, Format]:
    dataset = services.state.get_dataset(tenant, dataset_id)
    if dataset is None:
        raise not_found("dataset", dataset_id)
    spans = [
        BatchSpan(str(b["id"]), str(b["key"]), int(b["examples"])) for b in services.state.batches(dataset_id)
    ]
    fmt: Format = "preference" if dataset.get("kind") == "preference" else "openai"
    return Lines(spans, services.blobs.open_chunks), fmt


def _changed() -> ApiProblem:
    return ApiProblem(
        409, "dataset-changed", "a batch of the dataset was deleted while it was read; ask again"
    )


def _item(b: Browsed) -> ExampleItem:
    example = b.record.example
    return ExampleItem(
        line=b.line,
        batch_id=b.batch_id,
        preview=preview(example),
        messages=len(messages_of(example)) if example is not None else 0,
        codes=list(dict.fromkeys(p.code for p in b.problems)),
        outcome=b.outcome_name,
    )


def _one(browser: Browser, line: int) -> Browsed:
    """One line under the browser's recipe; 404 beyond the dataset's lines."""
    if line > browser.lines.total:
        raise not_found("example", str(line))
    try:
        found, _next = browser.scan(line, line + 1, 1, 1, lambda _b: True)
    except BlobNotFound:
        raise _changed() from None
    if not found:
        raise not_found("example", str(line))
    return found[0]


def _row(lines: Lines, line: int) -> Row:
    """One stored line; 404 beyond the dataset's lines."""
    try:
        row = next(lines.rows(line, line + 1), None)
    except BlobNotFound:
        raise _changed() from None
    if row is None:
        raise not_found("example", str(line))
    return row


class RecipeQuery:
    """The recipe parameters of /v1/validate, which every browsing route takes (a dependency, so
    they are declared once)."""

    def __init__(
        self,
        model: str | None,
        profile: str | None,
        policy: list[str] | None,
        system_prompt: str | None,
        train_on: Literal["all", "last"],
    ) -> None:
        self.model, self.profile, self.policy = model, profile, policy or []
        self.system_prompt, self.train_on = system_prompt, train_on

    def key(self) -> dict[str, Any]:
        """What a cursor is bound to."""
        return {
            "model": self.model,
            "profile": self.profile,
            "policy": self.policy,
            "system_prompt": self.system_prompt,
            "train_on": self.train_on,
        }

    def recipe(self, tenant: str, services: Services, fmt: Format) -> Recipe:
        return validation_recipe(
            tenant, services, self.model, self.profile, fmt, self.policy, self.system_prompt, self.train_on
        )


def provide_recipe_query(
    model: ModelQuery = None,
    profile: ProfileQuery = None,
    policy: PolicyQuery = None,
    system_prompt: SystemPromptQuery = None,
    train_on: TrainOnQuery = "all",
) -> RecipeQuery:
    return RecipeQuery(model, profile, policy, system_prompt, train_on)


RECIPE_QUERY: Dependencies = {"recipe_query": Provide(provide_recipe_query, sync_to_thread=False)}


class ExampleController(Controller):
    path = "/datasets/{dataset_id:str}/examples"
    tags = ("datasets",)
    dependencies = RECIPE_QUERY

    @get(operation_id="listExamples", sync_to_thread=True, responses=problems(400, 401, 404, 409, 422))
    def list_examples(
        self,
        dataset_id: FromPath[str],
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        recipe_query: NamedDependency[RecipeQuery],
        cursor: Cursor = None,
        limit: Limit = 50,
        code: Annotated[
            str | None,
            QueryParameter(
                min_length=1, max_length=CODE_MAX, description="only lines with this problem code"
            ),
        ] = None,
        batch_id: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=CODE_MAX, description="only the lines of this batch"),
        ] = None,
        outcome: Annotated[
            ExampleOutcome | None,
            QueryParameter(
                description="clean: no problem; kept: problems, written as given; fixed: fixes changed "
                "it; dropped / failed: a policy keeps it out of the file"
            ),
        ] = None,
        q: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=SEARCH_MAX,
                description=f"only lines where some message's text contains this (at most {SEARCH_MAX} "
                "characters, case-insensitive)",
            ),
        ] = None,
    ) -> ExamplePage:
        """The dataset's lines with their problem codes and outcome, in line order, a page at a time.

        Filters combine (all must hold). `q` is a plain substring, matched case-insensitively
        against the text of every message (string content, text and refusal parts; not tool
        calls or tool definitions): at most 200 characters, and like every filter it looks at no
        more than TUNESET_BROWSE_SCAN_LINES (10,000) lines per request, so a page of a sparse
        filter can come back short, or empty, with a `next_cursor` to go on from. A page costs a
        pass over the lines before it (to find duplicates of earlier lines) plus its own lines."""
        lines, fmt = _lines(services, tenant, dataset_id)
        if code is not None and code not in CODES:
            raise ApiProblem(
                400, "invalid-filter", f"code: unknown problem code {code!r}; see `tuneset codes`"
            )
        start, end = 1, lines.total + 1
        if batch_id is not None:
            span = lines.span(batch_id)
            if span is None:
                raise ApiProblem(400, "invalid-filter", f"batch_id: the dataset has no batch {batch_id!r}")
            start, end = span
        query = {
            "code": code,
            "batch_id": batch_id,
            "outcome": outcome,
            "q": q,
            **recipe_query.key(),
        }
        start = max(start, decode_cursor(cursor, dataset_id, query))
        browser = Browser(lines, recipe_query.recipe(tenant, services, fmt), fmt, services.table)
        keep = Filters(code=code, outcome=outcome, text=q).keeps
        try:
            found, next_line = browser.scan(start, end, limit, services.settings.browse_scan_lines, keep)
        except BlobNotFound:
            raise _changed() from None
        return ExamplePage(
            items=[_item(b) for b in found],
            next_cursor=None if next_line is None else encode_cursor(dataset_id, query, next_line),
            lines=lines.total,
        )

    @get(
        "/{line:int}", operation_id="getExample", sync_to_thread=True, responses=problems(401, 404, 409, 422)
    )
    def get_example(
        self,
        dataset_id: FromPath[str],
        line: Line,
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        recipe_query: NamedDependency[RecipeQuery],
    ) -> StoredExample:
        """One stored line as pushed (in its canonical form), with its problems under the recipe:
        the same objects /v1/validate lists in `problems_detail` for that line."""
        lines, fmt = _lines(services, tenant, dataset_id)
        b = _one(Browser(lines, recipe_query.recipe(tenant, services, fmt), fmt, services.table), line)
        return StoredExample(
            line=b.line,
            batch_id=b.batch_id,
            example=msgspec.json.decode(b.raw),
            problems=b.problems,
            changes=b.outcome.changes,
            outcome=b.outcome_name,
            outputs=len(b.outputs),
        )

    @get(
        "/{line:int}/view",
        operation_id="viewExample",
        sync_to_thread=True,
        responses=problems(401, 404, 409, 422),
    )
    def view_example(
        self,
        dataset_id: FromPath[str],
        line: Line,
        tenant: NamedDependency[str],
        services: NamedDependency[Services],
        recipe_query: NamedDependency[RecipeQuery],
        template: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=IDENT_MAX, description="a chat template (/v1/templates)"),
        ] = None,
        train_eot: Annotated[
            bool | None,
            QueryParameter(description="false: end-of-turn tokens untrained (default: the target's rule)"),
        ] = None,
        fixed: Annotated[
            bool,
            QueryParameter(description="true: the example as the recipe's fixes leave it; false: as stored"),
        ] = False,
        window: Annotated[
            int,
            QueryParameter(
                ge=0, le=LINE_MAX, description="with fixed: which of the examples the line gives (0-based)"
            ),
        ] = 0,
    ) -> InspectView:
        """The training view of one stored line: exactly what POST /v1/inspect answers for that
        example with the same `model`, `template`, `profile` and `train_eot`. With `fixed=true`,
        the view is of what the recipe's fixes (`policy`, `system_prompt`, `train_on`) make of it,
        as a build would write it; a line the recipe drops or fails is then 422 `example-not-written`,
        and a line split into windows (or turns) gives one view per `window`."""
        model, profile = recipe_query.model, recipe_query.profile
        exclusive(model, template, profile)
        lines, fmt = _lines(services, tenant, dataset_id)
        browser = Browser(lines, recipe_query.recipe(tenant, services, fmt), fmt, services.table)
        if not fixed:  # as stored: no recipe to apply
            row = _row(lines, line)
            example = browser.record(row).example
        else:
            b = _one(browser, line)
            if not b.outputs:
                raise ApiProblem(
                    422,
                    "example-not-written",
                    f"line {line} is {b.outcome_name} under this recipe: no fixed example to view",
                    errors=[
                        ProblemItem(p.line, p.message_index, p.code, p.message)
                        for p in b.problems
                        if p.action in ("drop", "fail")
                    ],
                )
            if window >= len(b.outputs):
                raise not_found("window", f"{window} of line {line} (it gives {len(b.outputs)})")
            example = b.outputs[window].example
        assert example is not None  # a stored line always decodes
        return inspect_view(example, line, model, template, profile, train_eot, tenant, services)
