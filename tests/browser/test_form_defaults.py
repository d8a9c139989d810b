"""The new-run form in Chromium: defaults that follow the dataset both ways, pickers that show what their field
holds (the eval data's too) and refuse models that cannot be used, presets that show and hide fields, and
every error, the inspect worker's module check included, in one round trip."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from tests.conftest import Stack

SAMPLE_TRAIN, SAMPLE_EVAL = str(SAMPLE_DATASET_DIR / "train.jsonl"), str(SAMPLE_DATASET_DIR / "eval.jsonl")


def run_count(stack: Stack) -> int:
    return len(httpx.get(stack.url + "/api/v1/runs?limit=1000", timeout=30).json())


@pytest.fixture(scope="module")
def uploaded(stack: Stack) -> dict[str, Any]:
    """An uploaded dataset: 30 rows of the sample's eval file."""
    rows = (SAMPLE_DATASET_DIR / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    response = httpx.post(
        stack.url + "/api/v1/datasets",
        files={"file": ("my-addresses.jsonl", "\n".join(rows).encode(), "application/jsonl")},
        data={"name": "my addresses"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def expect_values(page: Page, values: dict[str, str]) -> None:
    for name, value in values.items():
        expect(page.locator(f"#f-{name}")).to_have_value(value)


SAMPLE_RECIPE = {"r": "16", "lora_alpha": "32", "learning_rate": "0.003", "lr_scheduler_type": "cosine"}
SAMPLE_RECIPE |= {"max_steps": "400", "per_device_train_batch_size": "16", "eval_dataset": SAMPLE_EVAL}
OTHER_DEFAULTS = {"r": "8", "lora_alpha": "16", "learning_rate": "0.0002", "lr_scheduler_type": "linear"}
OTHER_DEFAULTS |= {"max_steps": "60", "per_device_train_batch_size": "8", "eval_dataset": "", "eval_split": "0.1"}


def test_the_defaults_follow_the_dataset_both_ways_keeping_what_the_user_typed(
    stack: Stack, page: Page, uploaded: dict[str, Any]
) -> None:
    page.goto(f"{stack.url}/datasets/{uploaded['id']}")
    page.click("#use-dataset")
    expect(page.locator("#f-dataset")).to_have_value(uploaded["path"])
    expect_values(page, OTHER_DEFAULTS)
    # The sample again: its recipe and its eval file come back.
    page.select_option("#pick-dataset", value=SAMPLE_TRAIN)
    expect_values(page, SAMPLE_RECIPE | {"eval_split": "0"})
    # What the user types stays, whichever way the dataset goes; the rest follows.
    page.fill("#f-r", "32")
    page.fill("#f-learning_rate", "0.001")
    page.select_option("#pick-dataset", value=uploaded["path"])
    expect_values(page, OTHER_DEFAULTS | {"r": "32", "learning_rate": "0.001"})
    page.select_option("#pick-dataset", value=SAMPLE_TRAIN)
    expect_values(page, SAMPLE_RECIPE | {"r": "32", "learning_rate": "0.001"})


def test_the_eval_picker_offers_and_shows_the_samples_eval_file(
    stack: Stack, page: Page, uploaded: dict[str, Any]
) -> None:
    page.goto(stack.url + "/runs/new")
    picker = page.locator("#pick-eval_dataset")
    expect(page.locator("#f-eval_dataset")).to_have_value(SAMPLE_EVAL)
    expect(picker).to_have_value(SAMPLE_EVAL)
    expect(picker.locator("option:checked")).to_contain_text("eval.jsonl")
    expect(picker.locator(f'option[value="{SAMPLE_TRAIN}"]')).to_have_count(0)  # the training rows are no eval data
    expect(picker.locator(f'option[value="{uploaded["path"]}"]')).to_have_count(1)
    # The picker follows its field: another dataset empties the eval file, the sample brings it back.
    page.select_option("#pick-dataset", value=uploaded["path"])
    expect(page.locator("#f-eval_dataset")).to_have_value("")
    expect(picker).to_have_value("")
    page.select_option("#pick-dataset", value=SAMPLE_TRAIN)
    expect(picker).to_have_value(SAMPLE_EVAL)
    page.fill("#f-eval_dataset", uploaded["path"])
    expect(picker).to_have_value(uploaded["path"])


def test_a_preset_shows_and_hides_the_fields_it_makes_apply(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    expect(page.locator("#f-bnb_4bit_quant_type")).to_be_visible()
    page.click('button[data-preset="lora"]')
    expect(page.locator("#f-quantization")).to_have_value("none")
    expect(page.locator("#f-bnb_4bit_quant_type")).to_be_hidden()
    expect(page.locator("#f-bnb_4bit_compute_dtype")).to_be_hidden()
    sent = page.evaluate("Array.from(new FormData(document.getElementById('run-form')).keys())")
    assert "bnb_4bit_quant_type" not in sent
    page.click('button[data-preset="qlora"]')
    expect(page.locator("#f-bnb_4bit_quant_type")).to_be_visible()


def test_a_model_without_weights_is_disabled_in_the_picker_and_refused_when_typed(
    stack: Stack, page: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    weightless = tmp_path_factory.mktemp("picked-models") / "no-weights-here"
    shutil.copytree(TINY_MODEL_DIR, weightless)
    (weightless / "model.safetensors").unlink()
    before = run_count(stack)
    page.goto(stack.url + "/runs/new")
    option = page.locator(f'#pick-base_model option[value="{weightless}"]')
    expect(option).to_be_disabled()
    expect(option).to_contain_text("cannot be used: has no safetensors weights")
    page.fill("#f-base_model", str(weightless))
    page.click("#start-run")
    error = page.locator('.error[data-field="base_model"]')
    expect(error).to_contain_text("has no safetensors weights", timeout=30_000)
    expect(page.locator("#f-base_model")).to_have_value(str(weightless))
    expect(page.locator("#f-base_model")).to_be_focused()
    assert run_count(stack) == before


def test_every_error_and_the_module_check_come_in_one_round_trip(stack: Stack, page: Page) -> None:
    before = run_count(stack)
    page.goto(stack.url + "/runs/new")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/runs") else None)
    page.click('button[data-preset="lora"]')
    page.fill("#f-target_modules", "foo_proj")
    page.fill("#f-learning_rate", "-1")
    page.fill("#f-dataset", "/etc/passwd")
    page.click("#start-run")
    expect(page.locator('.error[data-field="learning_rate"]')).to_contain_text("greater than 0", timeout=30_000)
    expect(page.locator('.error[data-field="target_modules"]')).to_contain_text("foo_proj not found")
    dataset = page.locator('.error[data-field="dataset"]')
    expect(dataset).to_contain_text("outside the dataset directories")
    expect(dataset).to_contain_text(str(Path(SAMPLE_DATASET_DIR).parents[1]))  # the allowed roots, named
    assert len(posts) == 1, posts
    expect(page.locator("#f-target_modules")).to_have_value("foo_proj")
    expect(page.locator("#f-learning_rate")).to_have_value("-1")
    assert run_count(stack) == before
