"""Over HTTP: browsing a dataset's lines (pages, filters), one line with its problems, its training
view, and GET /v1/models.

The reference for problems and outcomes is POST /v1/validate given the same examples in one body
(line N of the body is line N of the dataset); for a view, POST /v1/inspect given that example;
for the models, the model table's own data file. The examples are the real ShareGPT and
MT-Bench conversations of tests/data, a few of them made irregular the way real exports are
(a reply first, a question last, a turn repeated, an empty turn, no reply, a copy)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis

from service.settings import Settings
from service.store.profiles import CACHE
from service.store.state import State
from tests.api.test_api import Client, assert_problem, auth, make_dataset, push
from tests.api.test_profiles_api import qwen_json
from tests.conftest import jsonl, mtbench_conversations, sharegpt_conversations

POLICIES = [
    "consecutive_same_role=fix",
    "trailing_non_assistant=fix",
    "assistant_first=drop",
    "empty_content=fix",
]


def _irregular() -> list[dict[str, Any]]:
    """MT-Bench conversations with the irregularities of real exports, one kind each."""
    convos = [c["messages"] for c in mtbench_conversations()[:12]]
    hi = {"role": "user", "content": "thanks!"}
    return [
        {"messages": convos[0][1:]},  # starts with the assistant
        {"messages": [*convos[1], hi]},  # ends on a user message
        {"messages": [convos[2][0], convos[2][0], *convos[2][1:]]},  # the same question twice in a row
        {"messages": [*convos[3][:2], {"role": "user", "content": ""}, *convos[3][2:]]},  # an empty turn
        {"messages": convos[4][:1]},  # no reply at all
        {"messages": [convos[5][0], convos[5][1], convos[5][1], *convos[5][2:]]},  # a reply twice
        *({"messages": c} for c in convos[6:12]),
    ]


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """The default body caps: a model profile's upload is larger than the API fixtures' 1 MiB."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    CACHE.clear()
    return Settings(redis_url=redis_url, data_dir=tmp_path)


@pytest.fixture
def tenants(state: State) -> tuple[str, str]:
    return state.create_key("acme"), state.create_key("globex")


@pytest.fixture
def key(tenants: tuple[str, str]) -> str:
    return tenants[0]


class Pushed:
    """A dataset of three batches and the examples in line order (the reference's body)."""

    def __init__(self, ds: str, batches: list[str], examples: list[dict[str, Any]], sizes: list[int]):
        self.ds, self.batches, self.examples, self.sizes = ds, batches, examples, sizes

    def span(self, i: int) -> range:
        first = 1 + sum(self.sizes[:i])
        return range(first, first + self.sizes[i])


def push_dataset(client: Client, key: str) -> Pushed:
    share = sharegpt_conversations()
    parts = [
        share[:200],
        [*_irregular(), share[5], *share[200:300]],  # a copy of line 6 in the second batch
        [*share[300:], share[5], share[7]],  # and copies far from it
    ]
    ds = make_dataset(client, key)
    batches = []
    for part in parts:
        r = push(client, key, ds, jsonl(*part))
        assert r.status_code == 201, r.text
        assert r.json()["skipped"] == 0
        batches.append(r.json()["id"])
    return Pushed(ds, batches, [e for part in parts for e in part], [len(p) for p in parts])


@pytest.fixture
def pushed(client: Client, key: str) -> Pushed:
    return push_dataset(client, key)


def validate(client: Client, key: str, examples: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    r = client.post(
        "/v1/validate",
        params={"per_example": "true", **params},
        content=jsonl(*examples),
        headers={**auth(key), "Content-Type": "application/jsonl"},
    )
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    assert report["examples"] == len(examples)
    return report


def walk(client: Client, key: str, ds: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a listing, page after page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/v1/datasets/{ds}/examples", params=query, headers=auth(key))
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= int(params.get("limit", 50))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the cursor never ended")


def outcomes(report: dict[str, Any]) -> dict[int, str]:
    """Each line's outcome, from the validate report: its status, its changes and its problems."""
    status = {d["line"]: d["status"] for d in report["examples_detail"]}
    changed = {c["line"] for c in report["changes"]}
    problems = {p["line"] for p in report["problems_detail"]}
    out = {}
    for line, s in status.items():
        if s != "ok":
            out[line] = s
        elif line in changed:
            out[line] = "fixed"
        else:
            out[line] = "kept" if line in problems else "clean"
    return out


# -- pages --------------------------------------------------------------------------------------


def test_pages_walk_every_line_once_in_batch_order(client: Client, key: str, pushed: Pushed) -> None:
    items = walk(client, key, pushed.ds, limit=37)
    n = len(pushed.examples)
    assert [i["line"] for i in items] == list(range(1, n + 1))
    for b, batch in enumerate(pushed.batches):
        assert {i["batch_id"] for i in items if i["line"] in pushed.span(b)} == {batch}
    first = client.get(f"/v1/datasets/{pushed.ds}/examples", params={"limit": 5}, headers=auth(key)).json()
    assert first["lines"] == n
    user = next(m["content"] for m in pushed.examples[0]["messages"] if m["role"] == "user")
    assert first["items"][0]["preview"] == " ".join(user.split())[:160]
    assert first["items"][0]["messages"] == len(pushed.examples[0]["messages"])
    assert len(walk(client, key, pushed.ds, limit=100)) == n
    assert_problem(client.get(f"/v1/datasets/{pushed.ds}/examples?limit=101", headers=auth(key)), 400)


def test_a_scan_stops_at_its_budget_and_goes_on_from_its_cursor(
    settings: Settings, key: str, tmp_path: Any
) -> None:
    """A sparse filter: at most TUNESET_BROWSE_SCAN_LINES lines per request, short pages, all found."""
    from litestar.testing import TestClient

    from service.api.app import create_app

    small = settings.model_copy(update={"browse_scan_lines": 50})
    with TestClient(create_app(small)) as client:
        pushed = push_dataset(client, key)
        r = client.get(
            f"/v1/datasets/{pushed.ds}/examples", params={"code": "duplicate_example"}, headers=auth(key)
        )
        assert r.json()["items"] == []
        assert r.json()["next_cursor"] is not None
        found = walk(client, key, pushed.ds, code="duplicate_example")
        report = validate(client, key, pushed.examples)
    expected = sorted({p["line"] for p in report["problems_detail"] if p["code"] == "duplicate_example"})
    assert [i["line"] for i in found] == expected
    assert len(expected) == 3


# -- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("policies", [[], POLICIES])
def test_filters_give_the_lines_validate_flags(
    client: Client, key: str, pushed: Pushed, policies: list[str]
) -> None:
    report = validate(client, key, pushed.examples, policy=policies)
    by_code: dict[str, set[int]] = {}
    for p in report["problems_detail"]:
        by_code.setdefault(p["code"], set()).add(p["line"])
    assert {"no_system_message", "duplicate_example", "assistant_first", "no_assistant_message"} <= set(
        by_code
    )
    for code, lines in by_code.items():
        items = walk(client, key, pushed.ds, code=code, policy=policies, limit=100)
        assert [i["line"] for i in items] == sorted(lines), code
        assert all(code in i["codes"] for i in items)
    expected = outcomes(report)
    seen = set()
    for outcome in ("clean", "kept", "fixed", "dropped", "failed"):
        items = walk(client, key, pushed.ds, outcome=outcome, policy=policies, limit=100)
        assert [i["line"] for i in items] == sorted(k for k, v in expected.items() if v == outcome), outcome
        seen |= {i["line"] for i in items}
    assert seen == set(range(1, len(pushed.examples) + 1))
    if policies:
        assert set(expected.values()) >= {"fixed", "dropped", "failed", "kept"}
    items = walk(client, key, pushed.ds, code="no_system_message", outcome="kept", policy=policies)
    assert {i["line"] for i in items} == {k for k, v in expected.items() if v == "kept"} & by_code[
        "no_system_message"
    ]


def test_filter_by_batch_and_by_text(client: Client, key: str, pushed: Pushed) -> None:
    items = walk(client, key, pushed.ds, batch_id=pushed.batches[1], limit=30)
    assert [i["line"] for i in items] == list(pushed.span(1))
    items = walk(client, key, pushed.ds, batch_id=pushed.batches[2], code="duplicate_example")
    assert [i["line"] for i in items] == [pushed.span(2)[-2], pushed.span(2)[-1]]
    for needle in ("Vicuna", "python", "é", "no such text anywhere"):
        expected = [
            n
            for n, e in enumerate(pushed.examples, 1)
            if any(needle.casefold() in (m["content"] or "").casefold() for m in e["messages"])
        ]
        assert [i["line"] for i in walk(client, key, pushed.ds, q=needle, limit=100)] == expected, needle
    assert expected == []
    assert len(walk(client, key, pushed.ds, q="vicuna")) > 10


# -- one line -----------------------------------------------------------------------------------


def test_a_line_has_its_stored_example_and_the_problems_validate_gives(
    client: Client, key: str, pushed: Pushed
) -> None:
    report = validate(client, key, pushed.examples, policy=POLICIES)
    expected = outcomes(report)
    dup = pushed.span(1)[len(_irregular())]
    for line in (1, *pushed.span(1)[:6], dup, len(pushed.examples)):
        r = client.get(
            f"/v1/datasets/{pushed.ds}/examples/{line}", params={"policy": POLICIES}, headers=auth(key)
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["line"] == line
        assert got["example"] == pushed.examples[line - 1]
        assert got["problems"] == [p for p in report["problems_detail"] if p["line"] == line]
        assert got["changes"] == [c for c in report["changes"] if c["line"] == line]
        assert got["outcome"] == expected[line]
        assert got["batch_id"] == pushed.batches[next(b for b in range(3) if line in pushed.span(b))]
    got = client.get(f"/v1/datasets/{pushed.ds}/examples/{dup}", headers=auth(key)).json()
    assert "the example duplicates line 6" in [p["message"] for p in got["problems"]]


def test_the_view_of_a_line_is_what_inspect_gives_for_its_example(
    client: Client, key: str, pushed: Pushed
) -> None:
    targets: list[dict[str, Any]] = [
        {},
        {"model": "gpt-3.5-turbo"},
        {"template": "chatml"},
        {"template": "harmony", "train_eot": False},
        {"profile": "qwen"},  # the model's own chat template and tokenizer
    ]
    made = client.post("/v1/model-profiles", json=qwen_json("qwen"), headers=auth(key))
    assert made.status_code == 201, made.text
    for line in (1, 250, pushed.span(1)[2], len(pushed.examples)):
        for target in targets:
            view = client.get(
                f"/v1/datasets/{pushed.ds}/examples/{line}/view", params=target, headers=auth(key)
            )
            assert view.status_code == 200, view.text
            body = {"example": pushed.examples[line - 1], "line": line, **target}
            inspected = client.post("/v1/inspect", json=body, headers=auth(key))
            assert inspected.status_code == 200, inspected.text
            assert view.json() == inspected.json(), (line, target)


def test_the_view_after_fixes_counts_what_validate_counts(client: Client, key: str, pushed: Pushed) -> None:
    """Before fixes: the stored example's tokens; after: those validate counts under the policies."""
    before = {d["line"]: d for d in validate(client, key, pushed.examples)["examples_detail"]}
    after = {d["line"]: d for d in validate(client, key, pushed.examples, policy=POLICIES)["examples_detail"]}
    url = f"/v1/datasets/{pushed.ds}/examples"
    for line in pushed.span(1)[1:4]:  # a question last, a question twice, an empty turn
        raw = client.get(f"{url}/{line}/view", params={"policy": POLICIES}, headers=auth(key)).json()
        fixed = client.get(
            f"{url}/{line}/view", params={"policy": POLICIES, "fixed": "true"}, headers=auth(key)
        ).json()
        assert (raw["billed_tokens"], raw["trained_tokens"]) == (
            before[line]["billed_tokens"],
            before[line]["trained_tokens"],
        )
        assert (fixed["billed_tokens"], fixed["trained_tokens"]) == (
            after[line]["billed_tokens"],
            after[line]["trained_tokens"],
        )
        assert fixed["billed_tokens"] != raw["billed_tokens"], line
    dropped = pushed.span(1)[0]
    r = client.get(f"{url}/{dropped}/view", params={"policy": POLICIES, "fixed": "true"}, headers=auth(key))
    problem = assert_problem(r, 422, "example-not-written")
    assert [e["code"] for e in problem["errors"]] == ["assistant_first"]
    assert client.get(f"{url}/{dropped}/view", headers=auth(key)).status_code == 200  # as stored
    assert_problem(client.get(f"{url}/1/view", params={"fixed": "true", "window": 1}, headers=auth(key)), 404)
    assert_problem(
        client.get(f"{url}/1/view", params={"model": "gpt-4o", "template": "chatml"}, headers=auth(key)), 422
    )
    assert_problem(client.get(f"{url}/1/view", params={"template": "nope"}, headers=auth(key)), 422)


# -- deleting a batch, tenants, bad requests ------------------------------------------------------


def test_deleting_a_batch_moves_the_later_lines_up(client: Client, key: str, pushed: Pushed) -> None:
    url = f"/v1/datasets/{pushed.ds}"
    assert client.delete(f"{url}/batches/{pushed.batches[0]}", headers=auth(key)).status_code == 204
    rest = pushed.examples[pushed.sizes[0] :]
    items = walk(client, key, pushed.ds, limit=64)
    assert [i["line"] for i in items] == list(range(1, len(rest) + 1))
    assert {i["batch_id"] for i in items[: pushed.sizes[1]]} == {pushed.batches[1]}
    for line in (1, len(rest)):
        assert client.get(f"{url}/examples/{line}", headers=auth(key)).json()["example"] == rest[line - 1]
    assert_problem(client.get(f"{url}/examples/{len(rest) + 1}", headers=auth(key)), 404, "not-found")
    report = validate(client, key, rest)  # line 6 is gone: the copy in batch 2 is now the first one
    expected = [p for p in report["problems_detail"] if p["code"] == "duplicate_example"]
    got = walk(client, key, pushed.ds, code="duplicate_example")
    assert [i["line"] for i in got] == [p["line"] for p in expected]
    last = client.get(f"{url}/examples/{expected[0]['line']}", headers=auth(key)).json()
    assert [p for p in last["problems"] if p["code"] == "duplicate_example"] == expected[:1]
    stale = client.get(f"{url}/examples", params={"batch_id": pushed.batches[0]}, headers=auth(key))
    assert_problem(stale, 400, "invalid-filter")


def test_another_tenant_sees_no_examples(client: Client, tenants: tuple[str, str], pushed: Pushed) -> None:
    _, other = tenants
    url = f"/v1/datasets/{pushed.ds}/examples"
    for path in (url, f"{url}/1", f"{url}/1/view"):
        assert_problem(client.get(path, headers=auth(other)), 404, "not-found")
        assert_problem(client.get(path), 401, "unauthorized")
        assert_problem(client.get(path.replace(pushed.ds, "ds_0000"), headers=auth(tenants[0])), 404)


def test_bad_cursors_lines_and_filters_are_problems(client: Client, key: str, pushed: Pushed) -> None:
    url = f"/v1/datasets/{pushed.ds}/examples"
    page = client.get(url, params={"limit": 10}, headers=auth(key)).json()
    cursor = page["next_cursor"]
    assert (
        client.get(url, params={"limit": 10, "cursor": cursor}, headers=auth(key)).json()["items"][0]["line"]
        == 11
    )
    for params in (
        {"cursor": "nonsense"},
        {"cursor": "ex_zz"},
        {"cursor": cursor, "code": "no_system_message"},  # made for another filter
        {"cursor": cursor, "policy": "assistant_first=drop"},  # and another recipe
    ):
        assert_problem(client.get(url, params=params, headers=auth(key)), 400, "invalid-cursor")
    other = make_dataset(client, key, name="other")
    assert_problem(
        client.get(f"/v1/datasets/{other}/examples", params={"cursor": cursor}, headers=auth(key)), 400
    )
    assert_problem(client.get(url, params={"code": "no_such_code"}, headers=auth(key)), 400, "invalid-filter")
    assert_problem(client.get(url, params={"batch_id": "b_nope"}, headers=auth(key)), 400, "invalid-filter")
    assert_problem(client.get(url, params={"outcome": "great"}, headers=auth(key)), 400)
    assert_problem(client.get(url, params={"q": "x" * 201}, headers=auth(key)), 400)
    assert_problem(client.get(url, params={"model": "gpt-0"}, headers=auth(key)), 422)
    assert_problem(client.get(url, params={"policy": "assistant_first=explode"}, headers=auth(key)), 422)
    assert_problem(client.get(f"{url}/0", headers=auth(key)), 400)
    assert_problem(client.get(f"{url}/{len(pushed.examples) + 1}", headers=auth(key)), 404, "not-found")
    assert_problem(client.get(f"{url}/{len(pushed.examples) + 1}/view", headers=auth(key)), 404, "not-found")
    empty = make_dataset(client, key, name="empty")
    assert client.get(f"/v1/datasets/{empty}/examples", headers=auth(key)).json() == {
        "items": [],
        "next_cursor": None,
        "lines": 0,
    }


# -- models -------------------------------------------------------------------------------------


def test_models_are_the_model_table(client: Client, key: str) -> None:
    table = tomllib.loads(resources.files("service.core.data").joinpath("models.toml").read_text("utf-8"))
    items = client.get("/v1/models", headers=auth(key)).json()["items"]
    assert [m["name"] for m in items] == sorted(table["models"])
    default_min = table.get("defaults", {}).get("min_examples", 10)
    for m in items:
        entry = table["models"][m["name"]]
        assert m["encoding"] == entry["encoding"]
        assert m["max_tokens"] == entry["max_tokens"]
        assert m["min_examples"] == entry.get("min_examples", default_min)
        assert m["price_per_1m"] == entry.get("price_per_1m")
        assert m["aliases"] == sorted(entry.get("aliases", []))
    assert_problem(client.get("/v1/models"), 401)


# -- windows and preference datasets ------------------------------------------------------------


def test_a_line_split_into_windows_has_a_view_per_window(client: Client, key: str) -> None:
    """All 80 MT-Bench conversations as one, over gpt-3.5-turbo-0613's 4,096 tokens: windows."""
    long = {"messages": [m for c in mtbench_conversations() for m in c["messages"]]}
    rows = [*sharegpt_conversations()[:3], long]
    ds = make_dataset(client, key)
    assert push(client, key, ds, jsonl(*rows)).status_code == 201
    recipe = {"model": "gpt-3.5-turbo-0613", "policy": ["over_token_limit=fix"]}
    report = validate(client, key, rows, **recipe)
    windows = [d for d in report["examples_detail"] if d["line"] == 4]
    assert len(windows) > 3
    url = f"/v1/datasets/{ds}/examples/4"
    got = client.get(url, params=recipe, headers=auth(key)).json()
    assert (got["outcome"], got["outputs"]) == ("fixed", len(windows))
    assert got["problems"] == [p for p in report["problems_detail"] if p["line"] == 4]
    for w in windows:
        view = client.get(
            f"{url}/view", params={**recipe, "fixed": "true", "window": w["window"]}, headers=auth(key)
        )
        assert view.status_code == 200, view.text
        assert (view.json()["billed_tokens"], view.json()["trained_tokens"]) == (
            w["billed_tokens"],
            w["trained_tokens"],
        )
    beyond: dict[str, Any] = {**recipe, "fixed": "true", "window": len(windows)}
    assert_problem(client.get(f"{url}/view", params=beyond, headers=auth(key)), 404, "not-found")
    as_stored = client.get(f"{url}/view", params={"model": "gpt-3.5-turbo-0613"}, headers=auth(key)).json()
    assert as_stored["billed_tokens"] > 4096


def test_a_preference_dataset_is_browsed_like_a_chat_one(client: Client, key: str) -> None:
    """MT-Bench questions with GPT-4's answer preferred over a one-word one."""
    rows: list[dict[str, Any]] = []
    for c in mtbench_conversations()[:30]:
        first, answer = c["messages"][0], c["messages"][1]
        rows.append(
            {
                "input": {"messages": [first]},
                "preferred_output": [answer],
                "non_preferred_output": [{"role": "assistant", "content": " No. "}],
            }
        )
    rows.append(rows[4])
    ds = make_dataset(client, key, kind="preference")
    assert push(client, key, ds, jsonl(*rows[:10])).status_code == 201
    assert push(client, key, ds, jsonl(*rows[10:])).status_code == 201
    report = validate(client, key, rows, format="preference")
    for code in report["problem_counts"]:
        lines = sorted({p["line"] for p in report["problems_detail"] if p["code"] == code})
        assert [i["line"] for i in walk(client, key, ds, code=code, limit=7)] == lines, code
    assert report["problem_counts"]["duplicate_example"] == 1
    last = client.get(f"/v1/datasets/{ds}/examples/{len(rows)}", headers=auth(key)).json()
    assert last["example"] == rows[-1]
    assert last["problems"] == [p for p in report["problems_detail"] if p["line"] == len(rows)]
    word = rows[7]["preferred_output"][0]["content"].split()[3]
    texts = [
        [
            m["content"].casefold()
            for m in (*r["input"]["messages"], *r["preferred_output"], *r["non_preferred_output"])
        ]
        for r in rows
    ]
    expected = [n for n, t in enumerate(texts, 1) if any(word.casefold() in x for x in t)]
    assert 0 < len(expected) < len(rows)
    assert [i["line"] for i in walk(client, key, ds, q="NO.")] == list(
        range(1, len(rows) + 1)
    )  # the rejected reply
    assert [i["line"] for i in walk(client, key, ds, q=word)] == expected
    view = client.get(f"/v1/datasets/{ds}/examples/3/view", headers=auth(key)).json()
    inspected = client.post("/v1/inspect", json={"example": rows[2], "line": 3}, headers=auth(key)).json()
    assert view == inspected
