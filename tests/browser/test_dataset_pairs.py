"""A preference file uploaded through the datasets page, in Chromium: its page names the shape and the objectives
that train on it, draws the length of each part, and marks the trained tokens of both answers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import Stack

pytestmark = pytest.mark.slow
SHOTS = Path(os.environ.get("LORADECK_SCREENSHOTS", "test-artifacts/screenshots"))


def test_a_pair_file_page_shows_prompt_chosen_and_rejected(stack: Stack, page: Page, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "London"},
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    page.goto(stack.url + "/datasets")

    page.set_input_files("#upload-file", str(pairs))

    page.wait_for_url("**/datasets/*")
    expect(page.locator("#shape")).to_have_text("prompt/chosen/rejected")
    expect(page.locator("#trains")).to_have_text("trains: dpo, orpo, kto")
    for part in ("prompt", "chosen", "rejected"):
        expect(page.locator(f"#histogram-{part} .bar").first).to_be_visible()
    first = page.locator(".example").first
    expect(first.locator("pre.prompt")).to_have_text("<s>Capital of France?")
    expect(first.locator("pre.prompt mark")).to_have_count(0)
    expect(first.locator("pre.chosen mark")).to_have_text("Paris</s>")
    expect(first.locator("pre.rejected mark")).to_have_text("London</s>")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dataset-pairs.png"), full_page=True)
    page.goto(stack.url + "/datasets")
    expect(page.locator("table.datasets")).to_contain_text("prompt/chosen/rejected (dpo, orpo, kto)")
