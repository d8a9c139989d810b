"""GRPO in Chromium: choosing it shows its fields with its own defaults (they follow the objective, the user's
own values stay), the preset "GRPO on the sample" fills the recipe and the rewards, the rewards editor adds a regex
row whose bad pattern is refused at the field (the row marked), the run started holds the rewards as edited; and its
run page shows the latest sampled completions from the API, then each new one the worker publishes, without a
reload."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from app.config import TINY_MODEL_DIR, get_settings
from app.contracts.events import SampledCompletion, SamplesEvent
from app.rundir import RunDir
from tests.browser.test_pages import shot
from worker.runtime.publisher import EventPublisher

pytestmark = pytest.mark.slow


def samples(step: int, prompt: str, texts: list[str]) -> SamplesEvent:
    completions = [
        SampledCompletion(text=text, reward=1.0 + i / 4, rewards={"json_fields": 1.0, "regex": i / 4})
        for i, text in enumerate(texts)
    ]
    return SamplesEvent(step=step, prompt=prompt, reference='{"city": "臺北市"}', completions=completions)


def test_a_grpo_run_from_the_form_with_a_regex_reward_and_its_samples_live(web_url: str, page: Page) -> None:
    page.goto(web_url + "/runs/new")
    expect(page.locator("#reward-editor")).to_be_hidden()  # SFT: no rewards
    page.fill("#f-base_model", str(TINY_MODEL_DIR))
    page.select_option("#f-method", "lora")
    page.select_option("#f-objective", "grpo")
    # GRPO's fields, with its own defaults in the shared ones.
    for shown in ("num_generations", "max_completion_length", "temperature", "epsilon", "beta", "loss_type"):
        expect(page.locator(f"#f-{shown}")).to_be_visible()
    expect(page.locator("#f-loss_type")).to_have_value("dapo")
    expect(page.locator('#f-loss_type option[value="sigmoid"]')).to_be_disabled()
    expect(page.locator("#f-beta")).to_have_value("0")
    expect(page.locator("#f-learning_rate")).to_have_value("0.00005")
    # The default rewards as rows, each function's definition beside it; the JSON folded away below.
    rows = page.locator("#reward-editor tr.reward-row")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("select.reward-function")).to_have_value("json_fields")
    expect(rows.nth(1).locator(".reward-definition")).to_contain_text("1 when the completion equals the reference")
    expect(page.locator("#f-rewards")).to_be_hidden()
    # Back to SFT and again: the SFT sample's recipe, then GRPO's own values; what the user typed stays.
    page.fill("#f-epsilon", "0.3")
    page.select_option("#f-objective", "sft")
    expect(page.locator("#f-learning_rate")).to_have_value("0.003")
    page.select_option("#f-objective", "grpo")
    expect(page.locator("#f-learning_rate")).to_have_value("0.00005")
    expect(page.locator("#f-epsilon")).to_have_value("0.3")
    page.get_by_role("button", name="Remove reward 1 (json_fields)").click()
    expect(rows).to_have_count(1)
    expect(page.locator("#f-rewards")).to_have_value('[\n  {"function":"exact","weight":1}\n]')
    # The preset: the sample, its recipe, json_fields and exact as rewards, and what it leaves to the user.
    page.get_by_role("button", name="GRPO on the sample, continued from an SFT run").click()
    expect(page.locator("#f-beta")).to_have_value("0.04")
    expect(page.locator("#f-max_completion_length")).to_have_value("96")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("select.reward-function")).to_have_value("json_fields")
    expect(page.locator("#preset-note")).to_contain_text("init_from_run")

    page.get_by_role("button", name="Add a reward").click()
    expect(rows).to_have_count(3)
    third = rows.nth(2)
    expect(third.locator('select.reward-function option[value="exact"]')).to_be_disabled()  # each function once
    third.locator("select.reward-function").select_option("regex")
    third.get_by_label("Reward 3: weight").fill("0.5")
    third.get_by_label("Reward 3: pattern").fill("(unclosed")
    page.click("#start-run")
    error = page.locator("#e-rewards")
    expect(error).to_contain_text("rewards: reward 3: regex pattern '(unclosed' does not compile")
    expect(page.locator("#reward-editor tr.reward-row").nth(2)).to_have_class("reward-row has-error")
    shot(page, "grpo-rewards-refused")

    page.get_by_label("Reward 3: pattern").fill(r"^\{.*\}$")
    page.click("#start-run")
    page.wait_for_url(re.compile(r"/runs/(?!new)[\w-]+$"))
    run_id = page.url.rsplit("/", 1)[-1]
    spec = httpx.get(f"{web_url}/api/v1/runs/{run_id}").json()["spec"]
    assert spec["objective"] == "grpo" and spec["loss_type"] == "dapo" and spec["beta"] == 0.04
    assert spec["epsilon"] == 0.3 and spec["max_completion_length"] == 96
    assert [(r["function"], r["weight"], r["pattern"]) for r in spec["rewards"]] == [
        ("json_fields", 1.0, ""),
        ("exact", 1.0, ""),
        ("regex", 0.5, r"^\{.*\}$"),
    ]

    # The run page: the newest event of its samples file, as the worker appends them, then a live one.
    path = RunDir.of(run_id, get_settings()).samples_file
    path.parent.mkdir(parents=True, exist_ok=True)
    older = samples(5, "Where is 台北101?", ['{"city": "臺北市"}', "no idea"])
    path.write_text(json.dumps(older.data(), ensure_ascii=False) + "\n", encoding="utf-8")
    page.reload()
    card = page.locator("#samples-card")
    expect(card.locator("#samples-step")).to_have_text("5")
    expect(card.locator("#samples-prompt")).to_have_text("Where is 台北101?")
    expect(card.locator("tr.sample")).to_have_count(2)
    expect(card.locator("tr.sample").nth(1)).to_contain_text("no idea")
    expect(card.locator("tr.sample").nth(1)).to_contain_text("1.250")
    expect(card.locator("tr.sample").nth(1)).to_contain_text("json fields 1.000 · regex 0.250")

    live = samples(10, "Address of the Presidential Office?", ['{"city": "臺北市", "district": "中正區"}'] * 3)
    publisher = EventPublisher(get_settings().redis_url, run_id, maxlen=1000)
    publisher.publish(live)
    publisher.close()
    expect(card.locator("#samples-step")).to_have_text("10")
    expect(card.locator("#samples-prompt")).to_have_text("Address of the Presidential Office?")
    expect(card.locator("tr.sample")).to_have_count(3)
    expect(card.locator("#samples-mean")).to_have_text("1.250")
    expect(card.locator("#samples-reference")).to_have_text('{"city": "臺北市"}')
    shot(page, "grpo-samples")
