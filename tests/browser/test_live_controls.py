"""The run page's controls follow the run's live status without a reload, and the runs list keeps its archived
filter while it refreshes itself (issue 24, items 1 and 4)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_pages import shot
from tests.conftest import Stack

pytestmark = pytest.mark.slow


def test_a_page_opened_while_queued_offers_stop_and_then_merge_without_a_reload(stack: Stack, page: Page) -> None:
    # The stack has one trainer: while `blocker` trains, `waiting` stays queued, for as long as the test needs.
    blocker = stack.start_run(name="blocker", max_steps=5000)
    stack.wait_run(blocker["id"], lambda r: r["status"] == "running")
    waiting = stack.start_run(name="waiting", method="lora", quantization="none", max_steps=5000)
    page.goto(f"{stack.url}/runs/{waiting['id']}")
    expect(page.locator("#run-status")).to_have_text("queued")
    expect(page.locator("#cancel-run")).to_be_visible()
    expect(page.locator("#stop-run")).to_have_count(0)
    expect(page.locator("#open-playground")).to_have_count(0)  # nothing to try before it trains
    expect(page.locator("#delete-run")).to_have_count(0)

    assert httpx.post(f"{stack.url}/api/v1/runs/{blocker['id']}/cancel", timeout=30).status_code == 200
    expect(page.locator("#run-status")).to_have_text("running", timeout=120_000)
    # No reload from here on: what the run offers changes with its status.
    expect(page.locator("#stop-run")).to_be_visible()
    expect(page.locator("#open-playground")).to_be_visible()
    shot(page, "live-controls-running")
    page.click("#stop-run")
    expect(page.locator("#run-status")).to_have_text("stopped", timeout=120_000)
    expect(page.locator("#stop-run")).to_have_count(0)
    expect(page.locator("#cancel-run")).to_have_count(0)
    expect(page.locator("#delete-run")).to_be_visible()
    expect(page.locator("#download-adapter")).to_be_visible(timeout=30_000)
    expect(page.locator("#merge-button")).to_be_visible()
    expect(page.locator("#export-button")).to_be_visible()
    shot(page, "live-controls-stopped")
    # The elapsed time of the ended run is the runs list's, to the second: one rule on both pages.
    elapsed = page.locator("#run-elapsed").inner_text()
    page.goto(stack.url + "/")
    expect(page.locator(f'tr[data-run-id="{waiting["id"]}"] .progress-cell')).to_contain_text(elapsed)


def test_archived_runs_are_reached_from_the_list_and_stay_listed(stack: Stack, page: Page) -> None:
    shelved = stack.start_run(name="shelved", max_steps=2)
    stack.wait_run(shelved["id"])
    assert httpx.post(f"{stack.url}/api/v1/runs/{shelved['id']}/archive", timeout=30).status_code == 200
    row = page.locator(f'tr[data-run-id="{shelved["id"]}"]')
    page.goto(stack.url + "/?archived=true")
    expect(row).to_be_visible()
    for _ in range(2):  # the table refreshes itself every 2 s: the archived run is still listed after refreshes
        with page.expect_response(lambda r: "/runs/table" in r.url):
            pass
    expect(row).to_be_visible()
    page.goto(stack.url + "/")
    expect(row).to_have_count(0)
    page.get_by_label("Archived runs").check()  # a control on the list, not a URL to know
    expect(row).to_be_visible()
    # The table refreshes itself every 2 s: wait for refreshes to have come, then the archived run is still there.
    with page.expect_response(lambda r: "/runs/table" in r.url and "archived=true" in r.url):
        pass
    with page.expect_response(lambda r: "/runs/table" in r.url):
        pass
    expect(row).to_be_visible()
    expect(row.locator("a")).to_have_text("shelved")
    # A sort keeps the filter; the run page says it is archived and links back to the archived list.
    page.locator("th a.sort", has_text="Name").click()
    expect(row).to_be_visible()
    with page.expect_response(lambda r: "/runs/table" in r.url):
        pass
    expect(row).to_be_visible()
    page.goto(f"{stack.url}/runs/{shelved['id']}")
    page.click("#run-archived")
    expect(page.locator(f'tr[data-run-id="{shelved["id"]}"]')).to_be_visible()
    expect(page.get_by_label("Archived runs")).to_be_checked()
