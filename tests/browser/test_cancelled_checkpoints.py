"""A run cancelled with checkpoints is no dead end: the cancel confirmation names the checkpoints there are now
(the page was drawn before any was saved), and the cancelled run's page offers to resume from one or to use
one as the adapter."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.slow

# Trains until it is cancelled; a checkpoint every 5 steps, all of them kept.
ENDLESS = {
    "method": "lora",
    "quantization": "none",
    "max_steps": 100_000,
    "save_steps": 5,
    "save_total_limit": 100,
    "learning_rate": 2e-3,
}


def complete_checkpoints(stack: Stack, run_id: str) -> list[str]:
    listed = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/checkpoints", timeout=30).json()
    return [c["name"] for c in listed if c["complete"]]


def test_cancel_names_the_checkpoints_and_the_cancelled_run_offers_them(stack: Stack, page: Page) -> None:
    # The page is opened while the run waits behind another: no checkpoint of it exists yet.
    blocker = stack.start_run(name="ahead in the queue", **ENDLESS)
    stack.wait_run(blocker["id"], lambda r: r["status"] == "running")
    run = stack.start_run(name="cancel me", **ENDLESS)
    page.goto(f"{stack.url}/runs/{run['id']}")
    expect(page.locator("#run-status")).to_have_text("queued")
    assert httpx.post(f"{stack.url}/api/v1/runs/{blocker['id']}/cancel", timeout=30).status_code == 200

    # It trains; its first checkpoints are saved after the page was drawn.
    stack.wait_run(run["id"], lambda r: r["status"] == "running" and r["step"] > 10)
    saved = wait_for(lambda: len(names := complete_checkpoints(stack, run["id"])) >= 2 and names, 60, "2 checkpoints")
    page.click("#cancel-run")
    dialog = page.get_by_role("dialog", name="Cancel this run?")
    for name in saved:
        expect(dialog).to_contain_text(name)
    expect(dialog).not_to_contain_text("none saved yet")
    page.click("#confirm-cancel")
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=60_000)

    newest = complete_checkpoints(stack, run["id"])[-1]
    step = newest.removeprefix("checkpoint-")
    expect(page.locator("#no-adapter")).to_contain_text("cancelled with no adapter")
    expect(page.locator("#artifacts")).not_to_contain_text("Nothing yet")
    expect(page.locator("#resume-checkpoint")).to_have_text(f"Resume from checkpoint {step}")
    expect(page.locator("#adopt-checkpoint")).to_have_text(f"Use checkpoint {step} as the adapter")

    # Use it as the adapter: the panel offers its download and the merge, and says which step it is.
    page.click("#adopt-checkpoint")
    expect(page.locator("#download-adapter")).to_be_visible()
    expect(page.locator("#adapter-source")).to_contain_text(f"checkpoint-{step}")
    expect(page.locator("#merge-button")).to_be_visible()
    expect(page.locator("#adopt-checkpoint")).to_have_count(0)

    # Resume: the same run is queued again and trains on.
    page.click("#resume-checkpoint")
    expect(page.locator("#run-status")).to_have_text(re.compile("queued|running"))
    expect(page.locator("#download-adapter")).to_have_count(0)
    resumed = stack.wait_run(run["id"], lambda r: r["status"] == "running" and r["step"] > int(step))
    assert resumed["error"] is None
    assert httpx.post(f"{stack.url}/api/v1/runs/{run['id']}/cancel", timeout=30).status_code == 200
    assert stack.wait_run(run["id"])["status"] == "cancelled"
