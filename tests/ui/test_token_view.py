"""The example browser's token view in Debian's chromium, against a real `tuneset api`: for real
ShareGPT conversations and every kind of target (a provider model, built-in chat templates, an
uploaded model profile), the tokens the page highlights as trained are exactly the trained tokens
POST /v1/inspect reports for the same conversation, token id for token id and segment for
segment; each segment's reason is its hover title and shows in the side panel; the view after
a fix is that of the fixed conversation; the lines list filters as the API does."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.api.test_profiles_api import deepseek_files
from tests.ui.conftest import Stack, laptop, sharegpt, shot

pytestmark = pytest.mark.slow
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
LINES = [3, 57, 250, 498]

SEGMENTS_JS = """view => [...view.querySelectorAll('.seg')].map(seg => ({
    trained: seg.classList.contains('trained'),
    title: seg.title,
    ids: [...seg.querySelectorAll('.tok')].map(t => Number(t.dataset.id)),
    text: [...seg.querySelectorAll('.tok')].map(t => {
        const c = t.cloneNode(true); c.querySelectorAll('.nl').forEach(n => n.remove()); return c.textContent;
    }).join(''),
}))"""


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> str:
    rows = sharegpt()
    return stack.dataset("browse", [rows[:250], rows[250:]])


@pytest.fixture(scope="module")
def profile(stack: Stack) -> str:
    """A model profile: DeepSeek V3's own tokenizer.json and chat template, uploaded over HTTP."""
    files = deepseek_files()
    names = {"tokenizer": "tokenizer.json", "chat_template": "chat_template.jinja"}
    parts = {role: (names.get(role, f"{role}.json"), data) for role, data in files.items()}
    r = stack.http.post("/v1/model-profiles", files=parts, data={"name": "deepseek-v3"})
    assert r.status_code == 201, r.text
    return "deepseek-v3"


def inspect(stack: Stack, example: Any, target: str) -> dict[str, Any]:
    kind, name = target.split(":", 1)
    body = {"example": example, kind: name}
    r = stack.http.post("/v1/inspect", json=body)
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


def drawn(section: Locator) -> list[dict[str, Any]]:
    segments: list[dict[str, Any]] = section.locator(".tokens").evaluate(SEGMENTS_JS)
    return segments


def assert_same_view(section: Locator, view: dict[str, Any]) -> None:
    """The page's segments and tokens are the view's, and its highlight is the view's `trained`."""
    segments = drawn(section)
    assert [s["ids"] for s in segments] == [s["token_ids"] for s in view["segments"]]
    assert [s["trained"] for s in segments] == [s["trained"] for s in view["segments"]]
    assert [s["title"] for s in segments] == [s["reason"] for s in view["segments"]]
    highlighted = [
        int(i) for i in section.locator(".seg.trained .tok").evaluate_all("ts => ts.map(t => t.dataset.id)")
    ]
    reported = [t for s in view["segments"] if s["trained"] for t in s["token_ids"]]
    assert highlighted == reported
    assert len(highlighted) == view["trained_tokens"] > 0
    expect(section.locator(".trained-count")).to_have_text(str(view["trained_tokens"]))
    # token boundaries: every token is its own box, and together they spell the rendered text
    assert section.locator(".tok").count() == view["total_tokens"]
    assert "".join(s["text"] for s in segments) == "".join(s["text"] for s in view["segments"])


@pytest.mark.parametrize("target", ["model:gpt-4o-mini", "template:chatml", "template:harmony"])
def test_the_highlighted_tokens_are_the_trained_tokens_inspect_reports(
    page: Page, stack: Stack, dataset: str, target: str
) -> None:
    rows = sharegpt()
    for line in LINES:
        page.goto(f"{stack.base}/ui/datasets/{dataset}/examples/{line}?target={quote(target)}&show=before")
        section = page.locator("section[data-view='before']")
        assert_same_view(section, inspect(stack, rows[line - 1], target))
    shot(page, f"token-view-{target.replace(':', '-')}")


def test_a_model_profile_from_the_switcher(page: Page, stack: Stack, dataset: str, profile: str) -> None:
    line = 57
    page.goto(f"{stack.base}/ui/datasets/{dataset}/examples/{line}")
    page.get_by_label("View as").select_option(f"profile:{profile}")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(rf"/examples/{line}\?target=profile%3A{profile}&"))
    section = page.locator("section[data-view='before']")
    expect(section).to_contain_text(profile)
    assert_same_view(section, inspect(stack, sharegpt()[line - 1], f"profile:{profile}"))
    shot(page, "token-view-profile")


def test_each_segment_says_why_on_hover_and_in_the_side_panel(page: Page, stack: Stack, dataset: str) -> None:
    page.goto(f"{stack.base}/ui/datasets/{dataset}/examples/3?target=template%3Achatml&show=before")
    view = inspect(stack, sharegpt()[2], "template:chatml")
    section = page.locator("section[data-view='before']")
    panel = section.locator(".side")
    reasons = panel.locator(".reason")
    expect(reasons).to_have_text([s["reason"] for s in view["segments"]])
    trained = next(i for i, s in enumerate(view["segments"]) if s["trained"])
    section.locator(".seg").nth(trained).hover()
    expect(panel.locator(".detail")).to_contain_text(f"Segment {trained} ")
    expect(panel.locator(".detail")).to_contain_text(f"trained: {view['segments'][trained]['reason']}")
    # by keyboard: Tab moves from segment to segment, and the panel follows
    section.locator(".seg").first.focus()
    page.keyboard.press("Tab")
    expect(section.locator(".seg").nth(1)).to_be_focused()
    expect(panel.locator(".detail")).to_contain_text(view["segments"][1]["reason"])
    # a segment's link in the panel moves the focus to it
    panel.locator("li a").nth(trained).click()
    expect(section.locator(".seg").nth(trained)).to_be_focused()
    with laptop(page):
        shot(page, "token-view-side-panel", full_page=False)


def test_after_the_fix_the_view_is_the_fixed_conversation(page: Page, stack: Stack, dataset: str) -> None:
    prompt = "You are a helpful assistant."
    line = 250
    page.goto(
        f"{stack.base}/ui/datasets/{dataset}/examples/{line}?target=model%3Agpt-4o-mini"
        f"&policies={quote('no_system_message=fix')}&system_prompt={quote(prompt)}"
    )
    row = sharegpt()[line - 1]
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]
    before = inspect(stack, {"messages": messages}, "model:gpt-4o-mini")
    after = inspect(
        stack, {"messages": [{"role": "system", "content": prompt}, *messages]}, "model:gpt-4o-mini"
    )
    assert before["billed_tokens"] < after["billed_tokens"]
    assert_same_view(page.locator("section[data-view='before']"), before)
    assert_same_view(page.locator("section[data-view='after']"), after)
    expect(page.get_by_role("heading", name="Fixes", exact=True)).to_be_visible()
    expect(page.locator("section[data-view='after'] .billed")).to_have_text(str(after["billed_tokens"]))
    shot(page, "token-view-before-after")


def test_the_lines_list_filters_as_the_api_does(page: Page, stack: Stack, dataset: str) -> None:
    batches = stack.http.get(f"/v1/datasets/{dataset}/batches").json()["items"]
    page.goto(f"{stack.base}/ui/datasets/{dataset}")
    page.get_by_role("link", name="Browse the examples").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("500 lines")
    page.get_by_label("Batch").select_option(batches[1]["id"])
    page.get_by_label("Text").fill("hello")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_label("View as")).to_have_value("model:gpt-4o-mini-2024-07-18")  # the default's
    api = stack.http.get(
        f"/v1/datasets/{dataset}/examples",
        params={"batch_id": batches[1]["id"], "q": "hello", "model": "gpt-4o-mini"},
    ).json()
    assert api["items"]
    links = page.locator("tbody tr td:first-child a")
    expect(links).to_have_text([str(i["line"]) for i in api["items"]])
    assert all(i["line"] > 250 for i in api["items"])
    shot(page, "examples-filtered")
    links.first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Line {api['items'][0]['line']}")
