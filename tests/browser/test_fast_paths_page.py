"""The run page's fast paths: each throughput switch as the worker chose it (asked -> chosen) and why, and an
impossible choice made in the form failing the run at once with the field named."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_pages import shot
from tests.conftest import Stack

pytestmark = pytest.mark.slow


def test_the_run_page_says_what_each_switch_became_and_why(stack: Stack, page: Page) -> None:
    # The stack's one trainer is busy with another run, so this one's page opens before a worker has chosen
    # anything; once that run is cancelled, this one starts and its card fills in live, without a reload.
    busy = stack.start_run(name="keeps the trainer busy", method="lora", quantization="none", max_steps=100_000)
    stack.wait_run(busy["id"], until=lambda run: run["status"] == "running")
    page.goto(stack.url + "/runs/new")
    page.select_option("#f-method", "lora")
    page.select_option("#f-quantization", "none")
    page.fill("#f-max_steps", "2")
    page.click("#start-run")
    page.wait_for_url("**/runs/*")
    expect(page.locator("#run-status")).to_have_text("queued")
    expect(page.locator("#fast-paths-pending")).to_be_visible()
    assert httpx.post(f"{stack.url}/api/v1/runs/{busy['id']}/cancel", timeout=30).status_code == 200
    panel = page.locator("#fast-paths-card")
    expect(panel.locator("tbody tr")).to_have_count(5, timeout=120_000)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=240_000)
    run_id = page.locator("#run").get_attribute("data-run-id")
    done = httpx.get(f"{stack.url}/api/v1/runs/{run_id}", timeout=30).json()
    api = {p["name"]: p for p in done["fast_paths"]}
    packing = panel.locator('tr[data-fast-path="packing"]')
    expect(packing.locator(".fast-asked")).to_have_text("auto")
    expect(packing.locator(".fast-chosen")).to_have_text("on")
    expect(packing.locator(".fast-reason")).to_have_text(api["packing"]["reason"])
    checkpointing = panel.locator('tr[data-fast-path="gradient_checkpointing"]')
    expect(checkpointing.locator(".fast-chosen")).to_have_text("off")
    expect(checkpointing.locator(".fast-reason")).to_have_text("no GPU memory to save on the CPU")
    liger = panel.locator('tr[data-fast-path="liger_kernel"]')
    expect(liger.locator(".fast-chosen")).to_have_text("off")
    expect(liger.locator(".fast-reason")).to_contain_text("no CUDA GPU")
    expect(panel.locator('tr[data-fast-path="torch_compile"] .fast-reason')).to_contain_text("set on to try it")
    micro = panel.locator('tr[data-fast-path="micro_batch_size"]')
    expect(micro.locator(".fast-asked")).to_have_text("auto")
    expect(micro.locator(".fast-reason")).to_contain_text("on the CPU: the batch as set")
    shot(page, "run-fast-paths")


def test_liger_on_chosen_in_the_form_fails_the_run_naming_the_field(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    expect(page.locator("#f-liger_kernel")).to_have_value("auto")
    expect(page.locator("#f-packing")).to_have_value("auto")
    page.select_option("#f-method", "lora")
    page.select_option("#f-quantization", "none")
    page.fill("#f-max_steps", "2")
    page.select_option("#f-liger_kernel", "on")
    page.click("#start-run")
    page.wait_for_url("**/runs/*")
    expect(page.locator("#run-status")).to_have_text("failed", timeout=120_000)
    expect(page.locator("#run-error")).to_contain_text("liger_kernel: on, but")
    expect(page.locator("#run-error")).to_contain_text("set liger_kernel to auto or off")
    run_id = page.locator("#run").get_attribute("data-run-id")
    run = httpx.get(f"{stack.url}/api/v1/runs/{run_id}", timeout=30).json()
    assert run["spec"]["liger_kernel"] == "on" and run["fast_paths"] is None
    page.reload()
    expect(page.locator("#fast-paths-pending")).to_be_visible()
