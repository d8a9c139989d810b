"""The new-run form follows the objective in Chromium: choosing dpo shows its fields and hides SFT's, offers only
the methods and the dataset files (by their rows' shape) it trains on, and the DPO preset says what it leaves to
the user."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.config import SAMPLE_DATASET_DIR

SAMPLE_TRAIN, SAMPLE_EVAL = str(SAMPLE_DATASET_DIR / "train.jsonl"), str(SAMPLE_DATASET_DIR / "eval.jsonl")
PAIRS_PRESET = "DPO on the sample, continued from an SFT run"


@pytest.fixture
def pairs(loradeck_env: dict[str, str], tmp_path: Path) -> str:
    """An uploaded file of preference pairs, as the uploads page stores it."""
    from app.datasets import add_dataset
    from app.db import get_sessionmaker

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"}) + "\n", encoding="utf-8")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with get_sessionmaker()() as session:
        add_dataset(
            session=session, name="my pairs", filename=path.name, sha256=sha, path=path,
            size=path.stat().st_size, description={"rows": 1, "shape": "preference"},
        )  # fmt: skip
    return str(path)


def test_choosing_dpo_shows_its_fields_and_offers_only_what_it_trains_on(web_url: str, pairs: str, page: Page) -> None:
    page.goto(web_url + "/runs/new")
    sample = page.locator(f'#pick-dataset option[value="{SAMPLE_TRAIN}"]')
    mine = page.locator(f'#pick-dataset option[value="{pairs}"]')
    expect(sample).to_contain_text("— prompt/completion")
    expect(mine).to_contain_text("my pairs")
    expect(mine).to_contain_text("— prompt/chosen/rejected")
    # SFT, the default: its fields, not the preference ones; the pairs are not for it.
    expect(page.locator("#f-beta")).to_be_hidden()
    expect(page.locator("#f-packing")).to_be_visible()
    expect(mine).to_be_disabled()
    expect(mine).to_contain_text("not for sft: it trains on prompt/completion or messages or text rows")
    expect(page.locator('#f-objective option[value="dpo"]')).to_have_text(
        "Preference (DPO): Prefer the chosen answer to the rejected one, staying near a frozen reference."
    )

    page.select_option("#f-method", "ia3")
    page.select_option("#f-objective", "dpo")
    for shown in ("beta", "loss_type", "label_smoothing", "init_from_run"):
        expect(page.locator(f"#f-{shown}")).to_be_visible()
    for hidden in ("packing", "train_on_prompt", "desirable_weight"):
        expect(page.locator(f"#f-{hidden}")).to_be_hidden()
    # The methods it cannot train with are gone from the choice; the refused one gave way to LoRA.
    expect(page.locator("#f-method")).to_have_value("lora")
    for refused in ("ia3", "prompt_tuning"):
        expect(page.locator(f'#f-method option[value="{refused}"]')).to_be_disabled()
    expect(page.locator('#f-method option[value="qlora"]')).to_be_enabled()
    # The SFT files are disabled saying why, in both pickers; the pairs are offered.
    expect(sample).to_be_disabled()
    expect(sample).to_contain_text("not for dpo: it trains on prompt/chosen/rejected rows")
    expect(page.locator(f'#pick-eval_dataset option[value="{SAMPLE_EVAL}"]')).to_be_disabled()
    expect(page.locator(f'#pick-eval_dataset option[value="{pairs}"]')).to_be_enabled()
    expect(mine).to_be_enabled()
    expect(mine).not_to_contain_text("not for")
    page.select_option("#pick-dataset", value=pairs)
    expect(page.locator("#f-dataset")).to_have_value(pairs)

    # Back to SFT: its fields again, the preference ones hidden and not sent.
    page.select_option("#f-objective", "sft")
    expect(page.locator("#f-packing")).to_be_visible()
    expect(page.locator("#f-beta")).to_be_hidden()
    expect(page.locator("#f-beta")).to_be_disabled()
    expect(page.locator('#f-method option[value="ia3"]')).to_be_enabled()


def test_the_dpo_preset_chooses_the_sample_pairs_and_asks_for_the_run_to_continue(web_url: str, page: Page) -> None:
    page.goto(web_url + "/runs/new")
    expect(page.locator("#preset-note")).to_be_hidden()
    page.get_by_role("button", name=PAIRS_PRESET).click()
    expect(page.locator("#f-objective")).to_have_value("dpo")
    expect(page.locator("#f-dataset")).to_have_value(str(SAMPLE_DATASET_DIR / "preference.jsonl"))
    expect(page.locator("#f-eval_dataset")).to_have_value(str(SAMPLE_DATASET_DIR / "preference_eval.jsonl"))
    expect(page.locator("#f-beta")).to_be_visible()
    expect(page.locator("#f-packing")).to_be_hidden()
    expect(page.locator("#preset-note")).to_be_visible()
    expect(page.locator("#preset-note")).to_contain_text("init_from_run")
    expect(page.locator("#f-init_from_run")).to_have_value("")


def test_the_bundled_dataset_and_its_recipe_follow_the_objective(web_url: str, page: Page) -> None:
    pairs, pairs_eval = str(SAMPLE_DATASET_DIR / "preference.jsonl"), str(SAMPLE_DATASET_DIR / "preference_eval.jsonl")
    page.goto(web_url + "/runs/new")
    expect(page.locator("#f-dataset")).to_have_value(SAMPLE_TRAIN)
    page.select_option("#f-objective", "dpo")
    # The sample's pairs, their eval pairs and the DPO recipe for them, in place of the SFT sample's.
    expect(page.locator("#f-dataset")).to_have_value(pairs)
    expect(page.locator("#f-eval_dataset")).to_have_value(pairs_eval)
    expect(page.locator("#f-learning_rate")).to_have_value("0.00003")
    expect(page.locator("#f-max_steps")).to_have_value("100")
    page.select_option("#f-objective", "sft")
    expect(page.locator("#f-dataset")).to_have_value(SAMPLE_TRAIN)
    expect(page.locator("#f-eval_dataset")).to_have_value(SAMPLE_EVAL)
    expect(page.locator("#f-learning_rate")).to_have_value("0.003")
    expect(page.locator("#f-max_steps")).to_have_value("400")
    # A dataset the user chose stays whatever the objective.
    page.fill("#f-dataset", "/data/mine.jsonl")
    page.select_option("#f-objective", "kto")
    expect(page.locator("#f-dataset")).to_have_value("/data/mine.jsonl")
