"""A preference run's page draws its objective's panels (rewards, reward accuracy, log-probabilities) from the
stored points, and follows the live stream: a new metric point with named values moves them without a reload.

The points go the worker's way: into the database (app.runs.add_metrics) and onto the run's Redis Stream
(worker.runtime.publisher.EventPublisher), so the page reads them as it reads a training run's."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.contracts.events import MetricEvent
from app.db import get_sessionmaker
from app.schemas import RunSpec
from tests.browser.test_pages import shot
from worker.runtime.publisher import EventPublisher

pytestmark = pytest.mark.slow


def point(step: int, kind: str = "train", margin: float = 0.0, accuracy: float = 0.5) -> dict[str, Any]:
    values = {
        "rewards/margins": margin,
        "rewards/chosen": margin / 2,
        "rewards/rejected": -margin / 2,
        "rewards/accuracies": accuracy,
        "logps/chosen": -20.0 + margin,
        "logps/rejected": -20.0 - margin,
    }
    return {"step": step, "kind": kind, "time": float(step), "loss": 0.6931 - 0.05 * step, "values": values}


def test_a_dpo_run_page_draws_its_reward_panels_and_follows_new_points(web_url: str, page: Page) -> None:
    spec = RunSpec(
        base_model=str(TINY_MODEL_DIR),
        dataset=str(SAMPLE_DATASET_DIR / "train.jsonl"),
        objective="dpo",
        method="lora",
        name="dpo live",
    )
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=spec).id
        runs.claim_run(session=session, run_id=run_id, worker="test:1")
        stored = [point(1, margin=0.1), point(2, margin=0.4, accuracy=0.75), point(2, "eval", margin=0.3)]
        runs.add_metrics(session=session, run_id=run_id, points=stored)

    page.goto(f"{web_url}/runs/{run_id}")
    rewards, accuracy = page.locator("#panel-rewards"), page.locator("#panel-accuracy")
    for panel in ("rewards", "accuracy", "logps"):
        expect(page.locator(f"#panel-{panel}-chart canvas")).to_have_count(1)
    expect(page.locator("#panel-rewards-chart")).to_have_attribute("data-points", "3")
    expect(page.locator("#panel-rewards-chart")).to_have_attribute("data-eval-points", "1")  # drawn apart
    expect(rewards.locator(".panel-step")).to_have_text("2")
    expect(rewards.locator('[data-series="rewards/margins"]')).to_have_text("0.4000")
    expect(accuracy.locator('[data-series="rewards/accuracies"]')).to_have_text("75.0%")
    expect(page.locator("#params-objective")).to_have_text("Preference (DPO)")

    # A new point, as the worker's callback sends it: stored, and published on the stream.
    live = point(3, margin=1.25, accuracy=1.0)
    publisher = EventPublisher(get_settings().redis_url, run_id, maxlen=1000)
    with get_sessionmaker()() as session:
        runs.add_metrics(session=session, run_id=run_id, points=[live])
    publisher.publish(MetricEvent(**live))
    publisher.close()

    expect(page.locator("#panel-rewards-chart")).to_have_attribute("data-points", "4")
    expect(rewards.locator(".panel-step")).to_have_text("3")
    expect(rewards.locator('[data-series="rewards/margins"]')).to_have_text("1.2500")
    expect(accuracy.locator('[data-series="rewards/accuracies"]')).to_have_text("100.0%")
    expect(page.locator("#run-step")).to_have_text("3")  # the loss chart and figures follow as before
    shot(page, "run-dpo-panels")

    # Compare overlays the same named values across runs: this run logs the reward margin.
    page.goto(f"{web_url}/compare?runs={run_id}")
    expect(page.locator("#compare-values-chart")).to_have_attribute("data-series", "1")
    expect(page.locator("#compare-values-chart")).to_have_attribute("data-value", "rewards/margins")
    page.select_option("#compare-value", "rewards/accuracies")
    expect(page.locator("#compare-values-chart")).to_have_attribute("data-value", "rewards/accuracies")
    expect(page.locator("#compare-values-chart canvas")).to_have_count(1)
