"""The three journeys as a person does them, in Chromium: fill the form, watch the loss chart grow,
merge and download."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import Stack

pytestmark = pytest.mark.slow


def plotted_points(page: Page) -> int:
    return int(page.locator("#loss-chart").get_attribute("data-points") or 0)


def test_form_starts_a_qlora_run_the_chart_grows_and_merge_downloads(stack: Stack, page: Page, tmp_path: Path) -> None:
    page.goto(stack.url + "/runs/new")
    expect(page.locator("#f-method")).to_have_value("qlora")
    page.fill("#f-name", "browser qlora")
    page.fill("#f-max_steps", "40")
    page.fill("#f-per_device_train_batch_size", "4")
    page.fill("#f-eval_steps", "0")  # one eval pass, at the end: test_eval_panel.py has evaluations over a run
    page.click("#start-run")
    page.wait_for_url("**/runs/*")
    expect(page.locator("h1")).to_have_text("browser qlora")

    # The chart gains points while the run trains, not only at the end.
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) >= 2", timeout=180_000)
    first = plotted_points(page)
    expect(page.locator("#run-status")).to_have_text("running")
    page.wait_for_function(
        f"() => Number(document.querySelector('#loss-chart').dataset.points) > {first}", timeout=60_000
    )
    expect(page.locator("#params-trainable")).not_to_have_text("–")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=180_000)
    assert plotted_points(page) == 41  # 40 train points, and the eval loss on the sample's eval split at the end
    assert page.locator("#loss-chart canvas").count() == 1

    # A second browser tab draws the same curve from the stored history.
    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) === 41")
    other.close()

    # One click: merge, then the merged model downloads by itself.
    expect(page.locator("#download-adapter")).to_be_visible()
    with page.expect_download(timeout=180_000) as download_info:
        page.click("#merge-button")
    download = download_info.value
    assert download.suggested_filename.endswith("-merged.tar")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with tarfile.open(saved) as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
