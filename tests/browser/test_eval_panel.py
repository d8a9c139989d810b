"""The run page's eval card: the newest evaluation's loss and token accuracy, and their curves over the run."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from app.config import SAMPLE_DATASET_DIR
from tests.browser.test_pages import shot
from tests.conftest import QUICK_RUN, Stack

pytestmark = pytest.mark.slow


def test_the_run_page_shows_each_evaluations_loss_and_token_accuracy(
    stack: Stack, page: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A short eval file keeps the five evaluations short.
    rows = (SAMPLE_DATASET_DIR / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    eval_file = tmp_path_factory.mktemp("eval-panel") / "eval.jsonl"
    eval_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = {k: v for k, v in QUICK_RUN.items() if k != "eval_steps"}  # left out: evaluated over the run
    spec |= {"method": "lora", "quantization": "none", "max_steps": 10, "eval_dataset": str(eval_file)}
    created = httpx.post(stack.url + "/api/v1/runs", json=spec, timeout=30)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    page.goto(f"{stack.url}/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=240_000)
    evals = [
        p for p in httpx.get(f"{stack.url}/api/v1/runs/{run_id}/metrics", timeout=30).json() if p["kind"] == "eval"
    ]
    newest = evals[-1]

    card = page.locator("#eval-card")
    expect(card).to_be_visible()
    expect(page.locator("#eval-chart")).to_have_attribute("data-points", "5")
    expect(page.locator("#eval-step")).to_have_text("10")
    expect(page.locator("#eval-loss")).to_have_text(f"{newest['loss']:.4f}")
    expect(page.locator("#eval-token-accuracy")).to_have_text(f"{100 * newest['token_accuracy']:.1f}%")
    expect(page.locator("#eval-chart canvas")).to_have_count(1)  # the curves of both, over the run
    drawn = [f"{p['token_accuracy']:.4f}" for p in evals]
    expect(page.locator("#eval-chart")).to_have_attribute("data-token-accuracy", ",".join(drawn))
    shot(page, "run-eval-card")

    # Drawn from the stored history as well as live: a reload shows the same.
    page.reload()
    expect(page.locator("#eval-token-accuracy")).to_have_text(f"{100 * newest['token_accuracy']:.1f}%")
    expect(page.locator("#eval-chart")).to_have_attribute("data-points", "5")

    # The runs list and the compare page show the last evaluation's token accuracy beside its loss.
    share = f"{100 * newest['token_accuracy']:.1f}%"
    page.goto(stack.url + "/")
    expect(page.locator(f'tr[data-run-id="{run_id}"] .eval-loss')).to_contain_text(f"{newest['loss']:.4f}")
    expect(page.locator(f'tr[data-run-id="{run_id}"] .token-accuracy')).to_have_text(f"{share} tokens")
    page.goto(f"{stack.url}/compare?runs={run_id}")
    expect(page.locator(f'#results tr[data-run-id="{run_id}"] .token-accuracy')).to_have_text(f"({share} tokens)")
