"""The web UI's pages in Debian's chromium against a real `tuneset api`, a real worker and Redis,
on the real ShareGPT conversations: signing in, datasets, jobs, a build's live progress and its
cancel button, the build report with its links to examples, provider fine-tunes, webhook
deliveries and their retry button. What a page shows is compared with what the JSON API answers
for the same key."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, ViewportSize, expect

from tests.integration.test_worker_faults import distinct_sharegpt
from tests.ui.conftest import Stack, laptop, sharegpt, shot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(stack: Stack) -> dict[str, Any]:
    """The 500 conversations pushed in two batches and built once (consecutive turns merged)."""
    rows = sharegpt()
    ds = stack.dataset("support", [rows[:200], rows[200:]])
    started = stack.build(ds, {"model": "gpt-4o-mini", "policies": {"consecutive_same_role": "fix"}})
    job = stack.wait(started["job_id"])
    assert job["status"] == "succeeded", job
    report = stack.http.get(f"/v1/jobs/{job['id']}/artifacts/report.json").json()
    return {"dataset_id": ds, "job": job, "report": report}


def test_sign_in_keeps_the_key_in_an_http_only_strict_cookie(browser: BrowserContext, stack: Stack) -> None:
    browser.clear_cookies()
    page = browser.new_page()
    page.goto(f"{stack.base}/ui/jobs")  # not signed in: the login page, which comes back here
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fjobs$"))
    page.get_by_label("API key").fill("ts_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key is not valid.")
    assert browser.cookies() == []
    page.get_by_label("API key").fill(stack.key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{stack.base}/ui/jobs")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    (cookie,) = browser.cookies()
    assert (cookie["name"], cookie["value"], cookie["path"]) == ("tuneset_key", stack.key, "/ui")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    shot(page, "login-done")
    # the JSON API does not take the cookie: only the Authorization header
    bare = httpx.get(f"{stack.base}/v1/datasets", cookies={"tuneset_key": stack.key})
    assert bare.status_code == 401
    # a form posted from another origin is refused, even with the cookie
    forged = httpx.post(
        f"{stack.base}/ui/logout",
        cookies={"tuneset_key": stack.key},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert forged.status_code == 403
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{stack.base}/ui/login")
    assert browser.cookies() == []
    page.close()


def test_datasets_and_dataset_page_show_batches_and_problem_counts(
    page: Page, stack: Stack, built: dict[str, Any]
) -> None:
    ds = built["dataset_id"]
    page.goto(f"{stack.base}/ui/datasets")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="support"))
    expect(row).to_contain_text("500")  # examples
    shot(page, "datasets")
    row.get_by_role("link", name="support").click()
    expect(page).to_have_url(f"{stack.base}/ui/datasets/{ds}")
    batches = stack.http.get(f"/v1/datasets/{ds}/batches").json()["items"]
    assert [b["examples"] for b in batches] == [200, 300]
    for batch, lines in zip(batches, ["1–200", "201–500"], strict=True):
        batch_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=batch["id"]))
        expect(batch_row).to_contain_text(lines)
    counts = built["report"]["problem_counts"]
    assert counts  # the real data has problems (no system message, at least)
    problems = page.locator("#problems ~ table").first
    for group in built["report"]["problems"]:
        problem_row = problems.get_by_role("row").filter(has=page.get_by_role("link", name=group["code"]))
        expect(problem_row).to_contain_text(str(group["count"]))
    expect(page.get_by_role("link", name=built["job"]["id"]).first).to_be_visible()
    shot(page, "dataset")


def test_jobs_list_and_job_page_list_the_artifacts(page: Page, stack: Stack, built: dict[str, Any]) -> None:
    job_id = built["job"]["id"]
    page.goto(f"{stack.base}/ui/jobs?status=succeeded")
    expect(page.get_by_role("link", name=job_id)).to_be_visible()
    shot(page, "jobs")
    page.get_by_role("link", name=job_id).click()
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-done")).to_have_text(str(built["job"]["progress"]["done"]))
    names = [a["name"] for a in stack.http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]]
    links = page.locator("#files ~ table a")
    expect(links).to_have_text(names)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)  # it has ended
    shot(page, "job-succeeded")
    # a file opens in the browser, byte for byte what the API serves
    report_html = page.request.get(f"{stack.base}/ui/jobs/{job_id}/artifacts/report.html")
    assert report_html.status == 200
    assert report_html.headers["content-security-policy"] == "sandbox allow-scripts"
    assert report_html.body() == stack.http.get(f"/v1/jobs/{job_id}/artifacts/report.html").content


def test_report_links_every_problem_line_to_its_example(
    page: Page, stack: Stack, built: dict[str, Any]
) -> None:
    ds, job_id, report = built["dataset_id"], built["job"]["id"], built["report"]
    page.goto(f"{stack.base}/ui/jobs/{job_id}")
    page.get_by_role("link", name=re.compile("The full report")).click()
    expect(page.get_by_role("heading", name="Build report")).to_be_visible()
    expected = sorted(
        {s["line"] for g in report["problems"] for s in g["samples"] if s["line"] is not None}
        | {line for g in report["problems"] for line in g["lines"]}
    )
    hrefs = page.locator("a.problem-line").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    lines = sorted({int(re.match(rf"^/ui/datasets/{ds}/examples/(\d+)\?", h).group(1)) for h in hrefs})  # type: ignore[union-attr]
    assert lines == expected
    assert all("target=model%3Agpt-4o-mini" in h and "consecutive_same_role%3Dfix" in h for h in hrefs)
    shot(page, "report")
    first = page.locator("a.problem-line").first
    line = int(first.inner_text().removeprefix("line "))
    first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Line {line}")
    stored = stack.http.get(
        f"/v1/datasets/{ds}/examples/{line}", params={"policy": "consecutive_same_role=fix"}
    ).json()
    for p in stored["problems"]:
        expect(page.locator("ul.problems")).to_contain_text(p["message"])
    page.go_back()
    page.get_by_role("link", name="The plots (report.html)").click()
    expect(page).to_have_url(f"{stack.base}/ui/jobs/{job_id}/artifacts/report.html")
    shot(page, "report-plots")


def test_build_progress_is_live_and_cancel_stops_it(page: Page, stack: Stack) -> None:
    """Two builds of 20,000 conversations in shards of 200: the first followed to its end (its
    progress seen moving on the page while it runs), the second cancelled with the button."""
    rows = distinct_sharegpt(40)
    ds = stack.dataset("big", [rows[i : i + 10_000] for i in range(0, len(rows), 10_000)])
    started = stack.build(ds, {"model": "gpt-4o-mini", "shard_size": 200})
    page.goto(f"{stack.base}/ui/jobs/{started['job_id']}")
    seen: list[int] = []
    statuses: set[str] = set()
    deadline = time.monotonic() + 120
    shot_taken = False
    while True:
        text = page.locator("#job-done").inner_text()
        status = page.locator("#job-status").inner_text()
        statuses.add(status)
        if status == "running" and (not seen or seen[-1] != int(text)):
            seen.append(int(text))
            if len(seen) == 3 and not shot_taken:
                shot(page, "build-running", full_page=False)
                shot_taken = True
        if status in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        page.wait_for_timeout(50)
    assert "running" in statuses, statuses
    moving = sorted(set(seen))
    print("progress seen while running:", seen)
    assert len(moving) >= 2, seen  # at least two different progress values while it ran
    assert seen == sorted(seen), seen  # it only goes forward
    job = stack.wait(started["job_id"])
    assert job["status"] == "succeeded", job
    page.wait_for_url(f"{stack.base}/ui/jobs/{started['job_id']}")  # the page reloads when it ends
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-done")).to_have_text(str(job["progress"]["done"]))

    started = stack.build(ds, {"model": "gpt-4o-mini", "shard_size": 200})
    page.goto(f"{stack.base}/ui/jobs/{started['job_id']}")
    expect(page.locator("#job-status")).to_have_text("running", timeout=60_000)
    expect(page.locator("#job-done")).not_to_have_text("0", timeout=60_000)
    cancel = page.get_by_role("button", name="Cancel")
    cancel.focus()
    page.keyboard.press("Enter")  # keyboard only
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    job = stack.wait(started["job_id"])
    assert job["status"] == "cancelled", job
    assert job["progress"]["done"] < job["progress"]["total"]
    assert stack.http.get(f"/v1/jobs/{started['job_id']}/artifacts").json()["items"] == []
    shot(page, "build-cancelled")


def test_fine_tune_page_shows_events_and_checkpoints(page: Page, stack: Stack) -> None:
    r = stack.http.post(
        "/v1/providers",
        json={"name": "fake", "base_url": stack.fake.base_url, "api_key": "sk-fake-0123456789"},
    )
    assert r.status_code == 201, r.text
    ds = stack.dataset("tune", [sharegpt()[:100]])
    started = stack.build(
        ds,
        {
            "model": "gpt-4o-mini",
            "upload": {"provider": "fake"},
            "fine_tune": {"suffix": "ui", "hyperparameters": {"n_epochs": 2}},
        },
    )
    job = stack.wait(started["fine_tune_job_id"], timeout=180)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["events"]
    assert result["checkpoints"]
    page.goto(f"{stack.base}/ui/fine-tunes")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=job["id"]))
    expect(row).to_contain_text(result["fine_tuned_model"])
    expect(row).to_contain_text(str(result["trained_tokens"]))
    shot(page, "fine-tunes")
    row.get_by_role("link", name=job["id"]).click()
    events = page.locator("#events + table tbody tr")
    expect(events).to_have_count(len(result["events"]))
    expect(events.first).to_contain_text(result["events"][0]["message"])
    checkpoints = page.locator("#checkpoints + table tbody tr")
    expect(checkpoints).to_have_count(len(result["checkpoints"]))
    for row_, c in zip(checkpoints.all(), result["checkpoints"], strict=True):
        expect(row_).to_contain_text(c["fine_tuned_model_checkpoint"])
    expect(page.get_by_role("link", name=started["job_id"])).to_be_visible()  # its build
    with laptop(page):
        shot(page, "fine-tune-job")


def test_webhook_deliveries_show_attempts_and_retry_posts_a_retry(page: Page, stack: Stack) -> None:
    receiver = stack.receiver
    receiver.down = 10_000  # the receiver answers 503: every attempt fails
    sub = stack.http.post(
        "/v1/webhooks/subscriptions", json={"url": receiver.url, "event_types": ["build.succeeded"]}
    )
    assert sub.status_code == 201, sub.text
    ds = stack.dataset("hooks", [sharegpt()[:50]])
    started = stack.build(ds, {"model": "gpt-4o-mini"})
    assert stack.wait(started["job_id"])["status"] == "succeeded"
    deadline = time.monotonic() + 60
    while True:
        items = stack.http.get("/v1/webhooks/deliveries", params={"status": "failed"}).json()["items"]
        mine = [d for d in items if d["subscription_id"] == sub.json()["id"]]
        if mine:
            break
        assert time.monotonic() < deadline, stack.http.get("/v1/webhooks/deliveries").json()
        time.sleep(0.2)
    (delivery,) = mine
    attempts = len(delivery["attempts"])
    assert attempts >= 2
    page.goto(f"{stack.base}/ui/webhooks")
    section = page.locator(f"section[id='{delivery['id']}']")
    expect(section.locator("table.attempts tbody tr")).to_have_count(attempts)
    expect(section).to_contain_text("503")
    shot(page, "webhooks")
    requests_before = len(receiver.requests)
    section.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("status")).to_contain_text(delivery["id"])
    deadline = time.monotonic() + 30
    while len(stack.http.get(f"/v1/webhooks/deliveries/{delivery['id']}").json()["attempts"]) <= attempts:
        assert time.monotonic() < deadline, "the retry was not sent"
        time.sleep(0.2)
    assert len(receiver.requests) > requests_before
    retried = [h for h, _ in receiver.requests[requests_before:] if h["webhook-id"] == delivery["id"]]
    assert retried  # the same webhook-id, sent again
    page.reload()
    now = stack.http.get(f"/v1/webhooks/deliveries/{delivery['id']}").json()["attempts"]
    rows = section.locator("table.attempts tbody tr")
    assert rows.count() >= attempts + 1
    assert rows.count() in (len(now), len(now) - 1)  # one more may have been made since
    with laptop(page):
        shot(page, "webhooks-retried")


A11Y_JS = """() => ({
    unlabelled: [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(c => c.labels.length === 0 && !c.getAttribute('aria-label')).map(c => c.outerHTML),
    nameless: [...document.querySelectorAll('a, button')]
        .filter(e => !(e.innerText || e.getAttribute('aria-label') || '').trim()).map(e => e.outerHTML),
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    h1: document.querySelectorAll('h1').length,
})"""


def test_every_page_is_labelled_keyboard_reachable_and_fits_the_screen(
    page: Page, stack: Stack, built: dict[str, Any]
) -> None:
    ds, job_id = built["dataset_id"], built["job"]["id"]
    paths = [
        "/ui/datasets",
        f"/ui/datasets/{ds}",
        f"/ui/datasets/{ds}/examples",
        f"/ui/datasets/{ds}/examples/2?policies=consecutive_same_role%3Dfix",
        "/ui/jobs",
        f"/ui/jobs/{job_id}",
        f"/ui/jobs/{job_id}/report",
        "/ui/fine-tunes",
        "/ui/webhooks",
    ]
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    sizes: list[ViewportSize] = [{"width": 1280, "height": 800}, {"width": 1366, "height": 768}]
    for size in sizes:
        page.set_viewport_size(size)
        for path in paths:
            page.goto(stack.base + path)
            found = page.evaluate(A11Y_JS)
            assert found["unlabelled"] == [], (path, found["unlabelled"])
            assert found["nameless"] == [], (path, found["nameless"])
            assert found["overflow"] <= 0, (path, size, found["overflow"])  # no sideways scrolling
            assert found["h1"] == 1, path
            # the first Tab stop skips to the content, and a focused control shows it
            page.keyboard.press("Tab")
            expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
            page.keyboard.press("Tab")
            outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline == "solid", (path, outline)
    page.set_viewport_size({"width": 1280, "height": 800})
    # nothing comes from elsewhere: every request is to the service itself (no CDN, no font host)
    assert fetched
    assert [u for u in fetched if not u.startswith(stack.base + "/ui/") and not u.startswith("data:")] == []
    assert {f"{stack.base}/ui/static/ui.css", f"{stack.base}/ui/static/ui.js"} <= set(fetched)


def test_bad_input_is_a_page_with_a_4xx_never_a_5xx(stack: Stack, built: dict[str, Any]) -> None:
    ds = built["dataset_id"]
    cookies = {"tuneset_key": stack.key}
    cases = {
        "/ui/jobs/job_nope": 404,
        "/ui/datasets/ds_nope": 404,
        f"/ui/datasets/{ds}/examples/9999": 404,
        f"/ui/datasets/{ds}/examples/1?target=nonsense": 400,
        f"/ui/datasets/{ds}/examples/1?target=model%3Anot-a-model": 422,
        f"/ui/datasets/{ds}/examples/1?policies=no_system_message%3Dexplode": 422,
        f"/ui/datasets/{ds}/examples?cursor=ex_0000000001": 400,
        "/ui/jobs?status=melted": 400,
        f"/ui/jobs/{built['job']['id']}/artifacts/nope.json": 404,
    }
    for path, status in cases.items():
        r = httpx.get(stack.base + path, cookies=cookies)
        assert r.status_code == status, (path, r.status_code, r.text[-500:])
        assert r.headers["content-type"].startswith("text/html"), path
        assert 'role="alert"' in r.text, path
    # another tenant's job is not found, as over the API
    other = stack.state.create_key("other")
    r = httpx.get(f"{stack.base}/ui/jobs/{built['job']['id']}", cookies={"tuneset_key": other})
    assert r.status_code == 404
    # cancelling a finished job is the API's 409, shown as a page
    r = httpx.post(f"{stack.base}/ui/jobs/{built['job']['id']}/cancel", cookies=cookies)
    assert r.status_code == 409
    assert "already succeeded" in r.text


def test_a_build_started_from_the_dataset_page(page: Page, stack: Stack, built: dict[str, Any]) -> None:
    ds = built["dataset_id"]
    page.goto(f"{stack.base}/ui/datasets/{ds}")
    form = page.get_by_role("form", name="Start a build")
    expect(form.get_by_label("Model")).to_have_value("model:gpt-4o-mini-2024-07-18")  # the default
    form.get_by_label("Model").select_option("model:gpt-4.1-mini-2025-04-14")
    form.get_by_label("Policies").fill("consecutive_same_role=fix no_system_message=fix")
    form.get_by_label("System prompt").fill("Be brief.")
    form.get_by_role("button", name="Build").click()
    expect(page).to_have_url(re.compile(rf"{stack.base}/ui/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    report = stack.http.get(f"/v1/jobs/{job_id}/artifacts/report.json").json()
    assert report["build"]["dataset_id"] == ds
    assert report["build"]["recipe"]["model"] == "gpt-4.1-mini-2025-04-14"
    assert report["build"]["recipe"]["policies"] == {
        "consecutive_same_role": "fix",
        "no_system_message": "fix",
    }
    assert report["build"]["recipe"]["system_prompt"] == "Be brief."
    assert report["fixes"]["insert_system_prompt"] == 500  # none had a system message
    # a bad policy is the API's 422, shown on a page
    page.goto(f"{stack.base}/ui/datasets/{ds}")
    form.get_by_label("Policies").fill("no_system_message=explode")
    form.get_by_role("button", name="Build").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("422")
    expect(page.get_by_role("alert")).to_have_text(
        "unknown action 'explode' for no_system_message; use keep, fix, drop or fail (invalid_policy)"
    )
