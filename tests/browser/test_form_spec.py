"""The new-run form gives what it holds as JSON and as the `loradeck` and `curl` commands that start it, before
anything is queued: the JSON sent to the API queues the same run; a form that is not a run yet says why."""

from __future__ import annotations

import json

import httpx
from playwright.sync_api import Page, expect


def test_the_form_gives_its_run_as_json_cli_and_curl_before_starting(web_url: str, page: Page) -> None:
    page.goto(web_url + "/runs/new")
    page.fill("#f-name", "from the form's JSON")
    page.fill("#f-learning_rate", "0.0015")
    page.locator("#form-spec summary").click()
    expect(page.locator("#spec-json")).to_contain_text('"learning_rate": 0.0015')
    spec = json.loads(page.locator("#spec-json").inner_text())
    assert spec["name"] == "from the form's JSON" and spec["method"] == "qlora"
    assert page.locator("#spec-cli").inner_text().endswith("loradeck train spec.json")
    assert page.locator("#spec-curl").inner_text().startswith(f"curl -X POST {web_url}/api/v1/runs ")
    assert page.locator("#copy-spec-curl").is_visible()
    assert httpx.get(web_url + "/api/v1/runs", timeout=30).json() == []  # nothing was queued by looking

    # What the form gave starts the same run over the API.
    run = httpx.post(web_url + "/api/v1/runs", json=spec, timeout=30)
    assert run.status_code == 201, run.text
    assert run.json()["spec"]["learning_rate"] == 0.0015 and run.json()["name"] == "from the form's JSON"

    # Changed while open: it follows; a value that cannot be a run says which field to fix instead.
    page.fill("#f-learning_rate", "-1")
    page.locator("#f-learning_rate").dispatch_event("change")
    expect(page.locator("#spec-errors")).to_contain_text("learning_rate")
    expect(page.locator("#spec-json")).to_have_count(0)
