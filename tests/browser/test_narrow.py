"""At 390 px wide (a phone), the runs list, the run page's downloads and merge check, and the new-run form's
estimate are on screen, read from the elements' positions (issue 24, item 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.test_pages import shot
from tests.conftest import Stack

pytestmark = pytest.mark.slow
WIDTH = 390


@pytest.fixture(scope="module")
def merged_run(stack: Stack) -> dict[str, Any]:
    """A run that has trained and been merged: its page offers the downloads and the merge check."""
    run = stack.start_run(name="a phone's run", method="lora", quantization="none", max_steps=3)
    stack.wait_run(run["id"])
    assert httpx.post(f"{stack.url}/api/v1/runs/{run['id']}/merge", json={}, timeout=30).status_code == 202
    return stack.wait_run(run["id"], lambda r: any_merged(stack, r["id"]))


def any_merged(stack: Stack, run_id: str) -> bool:
    artifacts = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/artifacts", timeout=30).json()
    return any(a["kind"] == "merged" and a["status"] in ("ready", "failed") for a in artifacts)


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": WIDTH, "height": 844}, accept_downloads=True)
    page = context.new_page()
    yield page
    context.close()


def box(locator: Locator) -> dict[str, float]:
    expect(locator).to_be_visible()
    found = locator.bounding_box()
    assert found is not None
    return found


def on_screen(locator: Locator, what: str) -> None:
    """Wholly inside the viewport's width (the page scrolls down, never sideways)."""
    where = box(locator)
    assert where["x"] >= 0 and where["x"] + where["width"] <= WIDTH + 0.5, f"{what} is at {where} in {WIDTH} px"


def test_runs_list_shows_each_runs_key_figures(stack: Stack, merged_run: dict[str, Any], phone: Page) -> None:
    phone.goto(stack.url + "/")
    row = phone.locator(f'tr[data-run-id="{merged_run["id"]}"]')
    on_screen(row.locator("a").first, "the run's name")
    on_screen(row.locator(".badge").first, "its status")
    for column in ("progress", "last-loss", "eval-loss", "exact-match", "created"):
        on_screen(row.locator(f'td[data-column="{column}"]'), column)
    shot(phone, "narrow-runs-list")


def test_run_page_downloads_and_merge_check_are_readable(stack: Stack, merged_run: dict[str, Any], phone: Page) -> None:
    phone.goto(f"{stack.url}/runs/{merged_run['id']}")
    on_screen(phone.locator("#download-adapter"), "the adapter's download")
    on_screen(phone.locator("#download-merged"), "the merged model's download")
    on_screen(phone.locator("#export-button"), "Export GGUF")
    check = phone.locator(".merge-check")
    on_screen(check, "the merge check")
    assert box(check)["width"] >= WIDTH * 0.6, f"the merge check is squeezed into {box(check)['width']} px"
    # Its last figure says what it measures, not "differs from the base by 12.3".
    expect(check).to_contain_text("logits differ from the base model's by up to")
    shot(phone, "narrow-run-page")


def test_new_run_estimate_comes_before_start_run(stack: Stack, phone: Page) -> None:
    phone.goto(stack.url + "/runs/new")
    estimate = phone.locator("#estimate")
    expect(estimate).to_contain_text("trainable", timeout=60_000)
    start = box(phone.locator("#start-run"))
    assert box(estimate)["y"] + box(estimate)["height"] <= start["y"], "the estimate sits below Start run"
    on_screen(phone.locator("#start-run"), "Start run")
    shot(phone, "narrow-new-run")
