"""Did my fine-tune work? Answered on the page, as a first-time user meets it: the form's default QLoRA run
on the sample task, its evaluating phase, its chart, its scores, and the playground on an eval row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from app.config import SAMPLE_DATASET_DIR
from tests.browser.test_pages import shot
from tests.conftest import Stack

pytestmark = pytest.mark.slow
SAMPLE_EVAL = str(SAMPLE_DATASET_DIR / "eval.jsonl")


def _percent(text: str) -> float:
    found = re.search(r"([0-9.]+)%", text)
    assert found, text
    return float(found.group(1))


def test_presets_keep_the_eval_data_and_the_eval_data_follows_the_dataset(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    prompts = page.locator("#f-regression_prompts").input_value()
    assert len(prompts.splitlines()) == 4
    expect(page.locator("#f-eval_dataset")).to_have_value(SAMPLE_EVAL)
    for preset, method in (("lora", "lora"), ("smoke", "lora"), ("qlora", "qlora")):
        page.click(f'button[data-preset="{preset}"]')
        expect(page.locator("#f-method")).to_have_value(method)
        expect(page.locator("#f-eval_dataset")).to_have_value(SAMPLE_EVAL)
        expect(page.locator("#f-regression_prompts")).to_have_value(prompts)
    expect(page.locator("#f-max_steps")).to_have_value("5")  # the smoke preset's, kept by the QLoRA preset
    # Another dataset: the sample's eval file goes, a held-out split of the new data comes; and back.
    page.fill("#f-dataset", "/somewhere/else.jsonl")
    page.locator("#f-dataset").dispatch_event("change")
    expect(page.locator("#f-eval_dataset")).to_have_value("")
    expect(page.locator("#f-eval_split")).to_have_value("0.1")
    page.fill("#f-dataset", str(SAMPLE_DATASET_DIR / "train.jsonl"))
    page.locator("#f-dataset").dispatch_event("change")
    expect(page.locator("#f-eval_dataset")).to_have_value(SAMPLE_EVAL)
    expect(page.locator("#f-eval_split")).to_have_value("0")


def test_use_in_a_new_run_never_leaves_the_sample_eval_set(stack: Stack, page: Page, tmp_path: Path) -> None:
    upload = tmp_path / "my-addresses.jsonl"
    rows = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "eval.jsonl").read_text().splitlines()[:40]]
    upload.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    page.goto(stack.url + "/datasets")
    page.set_input_files("#upload-file", str(upload))
    page.wait_for_url("**/datasets/*")
    page.click("#use-dataset")
    expect(page.locator("#f-dataset")).to_have_value(re.compile(r"\.jsonl$"))
    assert page.locator("#f-dataset").input_value() != str(SAMPLE_DATASET_DIR / "train.jsonl")
    expect(page.locator("#f-eval_dataset")).to_have_value("")
    expect(page.locator("#f-eval_split")).to_have_value("0.1")


def test_the_default_qlora_run_learns_the_sample_task_and_the_page_shows_it(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    expect(page.locator("#f-method")).to_have_value("qlora")
    page.fill("#f-name", "did it work")
    max_steps = int(page.locator("#f-max_steps").input_value())
    page.click("#start-run")
    page.wait_for_url("**/runs/*")
    run_id = page.locator("#run").get_attribute("data-run-id")

    # After the last step base and adapter answer the eval rows: the page says so, then shows the scores.
    expect(page.locator("#run-phase")).to_be_visible(timeout=420_000)
    expect(page.locator("#run-phase")).to_contain_text("evaluating")
    expect(page.locator("#run-phase")).to_contain_text("rows")
    expect(page.locator("#download-adapter")).to_be_visible(timeout=30_000)  # offered while it evaluates
    shot(page, "run-evaluating")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=300_000)
    expect(page.locator("#run-phase")).to_be_hidden()
    expect(page.locator("#task-metrics td[data-side=adapter]")).to_contain_text("%", timeout=60_000)
    base = _percent(page.locator("#task-metrics td[data-side=base]").inner_text())
    adapter = _percent(page.locator("#task-metrics td[data-side=adapter]").inner_text())
    assert adapter >= base + 50, (base, adapter)

    # Evaluated five times over the run (eval_steps auto); the last eval loss shares its step with the last
    # train point and is drawn there all the same.
    page.reload()
    page.wait_for_function("() => document.querySelector('#loss-chart').dataset.evalX !== undefined")
    every = max_steps // 5
    assert page.locator("#loss-chart").get_attribute("data-eval-x") == ",".join(str(every * n) for n in range(1, 6))
    expect(page.locator("#eval-token-accuracy")).to_contain_text("%")
    shot(page, "run-did-it-work")

    # The runs list shows the score beside the run.
    page.goto(stack.url + "/?sort=exact_match")
    expect(page.locator(f'tr[data-run-id="{run_id}"] .exact-match')).to_contain_text(f"{adapter:.1f}%")

    # The playground prompts as the run trained, and its answer to an eval row is the evaluation's.
    examples = httpx.get(f"{stack.url}/api/v1/runs/{run_id}", timeout=30).json()["evaluation"]["examples"]
    page.goto(f"{stack.url}/runs/{run_id}/playground")
    expect(page.locator("#chat")).not_to_be_checked()
    page.click("#try-eval-row")
    expect(page.locator("#expected")).to_have_text(examples[0]["expected"])
    assert page.locator("#prompt").input_value() == examples[0]["prompt"]
    page.click("#generate")
    for side in ("0", "1"):
        expect(page.locator(f"#answer-{side}")).to_have_attribute("data-done", "1", timeout=120_000)
    assert page.locator("#answer-1").inner_text() == examples[0]["adapter"]
    assert page.locator("#answer-0").inner_text() == examples[0]["base"]
    shot(page, "playground-eval-row")
