"""Every dashboard page in Chromium, as a user drives it: click, type, upload, wait for live updates.

Each test saves a screenshot of its page under test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import create_engine, insert

from app.config import SAMPLE_DATASET_DIR
from app.models import Metric, Run
from app.schemas import DEFAULT_REGRESSION_PROMPTS
from tests.conftest import Stack

pytestmark = pytest.mark.slow
SHOTS = Path(os.environ.get("LORADECK_SCREENSHOTS", "test-artifacts/screenshots"))


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def points(page: Page) -> int:
    return int(page.locator("#loss-chart").get_attribute("data-points") or 0)


def test_runs_list_updates_live_and_shows_queue_positions(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/")
    first = stack.start_run(name="list-first", max_steps=40)
    second = stack.start_run(name="list-second", max_steps=5)
    first_row = page.locator(f'tr[data-run-id="{first["id"]}"]')
    second_row = page.locator(f'tr[data-run-id="{second["id"]}"]')
    # No reload: the table refreshes itself as the runs move through the queue.
    expect(first_row.locator(".badge")).to_have_text("running", timeout=120_000)
    expect(second_row.locator(".queue-position")).to_have_text("#1 in queue")
    expect(first_row).to_contain_text("ETA", timeout=60_000)
    shot(page, "runs-list")
    expect(second_row.locator(".badge")).to_have_text("succeeded", timeout=240_000)
    expect(first_row.locator(".badge")).to_have_text("succeeded")
    page.fill("#run-search", "second")
    expect(page.locator("tr[data-run-id]")).to_have_count(1)
    expect(page.locator("tr[data-run-id]")).to_contain_text("list-second")


def test_new_run_presets_errors_and_duplicate(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    page.fill("#f-name", "kept name")
    page.click('button[data-preset="smoke"]')
    expect(page.locator("#f-max_steps")).to_have_value("5")
    expect(page.locator("#f-name")).to_have_value("kept name")
    page.click('button[data-preset="lora"]')
    expect(page.locator("#f-method")).to_have_value("lora")
    expect(page.locator("#f-max_steps")).to_have_value("5")  # a preset sets only its own fields
    # A mistake: the error sits under its field and everything typed stays.
    page.fill("#f-r", "0")
    page.fill("#f-learning_rate", "3e-4")
    page.click("#start-run")
    expect(page.locator('.error[data-field="r"]')).to_contain_text("greater than or equal to 1")
    expect(page.locator("#f-r")).to_have_value("0")
    expect(page.locator("#f-learning_rate")).to_have_value("3e-4")
    expect(page.locator("#f-name")).to_have_value("kept name")
    expect(page.locator("#f-method")).to_have_value("lora")
    shot(page, "new-run-error")
    run = stack.start_run(name="to duplicate", max_steps=3, r=4, learning_rate=1e-3)
    page.goto(f"{stack.url}/runs/{run['id']}")
    page.click("#duplicate-run")
    expect(page.locator("#f-name")).to_have_value("to duplicate (copy)")
    expect(page.locator("#f-r")).to_have_value("4")
    expect(page.locator("#f-learning_rate")).to_have_value("0.001")
    stack.wait_run(run["id"])


def test_new_run_with_keyboard_only(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    page.keyboard.press("Tab")
    for _ in range(40):  # from the top of the page to the name field, as a keyboard user would
        if page.evaluate("document.activeElement.id") == "f-name":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-name"
    page.keyboard.type("typed by keyboard")
    page.keyboard.press("Tab")  # base_model
    page.keyboard.press("Enter")  # submits the form
    expect(page.locator("h1")).to_have_text("typed by keyboard", timeout=30_000)
    run_id = page.locator("#run").get_attribute("data-run-id")
    assert run_id
    httpx.post(f"{stack.url}/api/v1/runs/{run_id}/cancel", timeout=30)


def test_run_page_controls_and_reload_mid_run(stack: Stack, page: Page) -> None:
    prompts = list(DEFAULT_REGRESSION_PROMPTS)
    spec = {"eval_split": 0.05, "eval_steps": 20, "regression_prompts": prompts, "task_eval_rows": 50}
    run = stack.start_run(name="watch me", max_steps=60, **spec)
    page.goto(f"{stack.url}/runs/{run['id']}")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) >= 5", timeout=180_000)
    expect(page.locator("#run-status")).to_have_text("running")
    # Reload mid-run: every point logged so far is drawn again, then the page keeps following.
    page.reload()
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) >= 5")
    stored = len(httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/metrics", timeout=30).json())
    assert points(page) >= min(stored, 5)
    before = points(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('#loss-chart').dataset.points) > {before}", timeout=60_000
    )
    page.select_option("#y-scale", "log")
    page.select_option("#x-axis", "time")
    page.fill("#smoothing", "0.9")
    expect(page.locator("#smoothing-value")).to_have_text("0.90")
    expect(page.locator("#loss-chart .u-legend")).to_contain_text("eval loss")
    for panel in ("#lr-chart", "#grad-chart", "#tps-chart"):
        expect(page.locator(f"{panel} canvas")).to_have_count(1)
    expect(page.locator("#log-tail pre")).to_contain_text("step", timeout=30_000)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=240_000)
    metrics = httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/metrics", timeout=30).json()
    page.wait_for_function(f"() => Number(document.querySelector('#loss-chart').dataset.points) === {len(metrics)}")
    assert any(m["kind"] == "eval" for m in metrics)
    # When training ends, base and adapter are scored side by side without a reload.
    expect(page.locator("#task-metrics td[data-side=adapter]")).to_contain_text("%", timeout=60_000)
    expect(page.locator("#regression tbody tr")).to_have_count(4)
    shot(page, "run-page")


def test_datasets_page_upload_preview_and_errors(stack: Stack, page: Page, tmp_path: Path) -> None:
    page.goto(stack.url + "/datasets")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{oops\n{"prompt": "c"}\n')
    page.set_input_files("#upload-file", str(bad))
    expect(page.locator("#upload-error")).to_contain_text("broken.jsonl has 2 bad row(s)")
    expect(page.locator("#upload-error li")).to_have_text([
        "broken.jsonl line 2: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        'broken.jsonl line 3: "completion" is missing',
    ])  # fmt: skip
    shot(page, "datasets-error")
    good = tmp_path / "addresses.jsonl"
    good.write_bytes((SAMPLE_DATASET_DIR / "eval.jsonl").read_bytes())
    page.fill("#upload-length", "48")
    page.set_input_files("#upload-file", str(good))
    page.wait_for_url("**/datasets/*")
    expect(page.locator("#truncated")).to_contain_text("rows")
    expect(page.locator(".histogram .bar.over").first).to_be_visible()
    expect(page.locator("pre.rendered mark").first).to_contain_text('{"city":')
    shot(page, "dataset-page")
    page.click("#use-dataset")
    expect(page.locator("#f-dataset")).to_have_value(str(stack.data_dir.resolve() / "datasets") + "/" + _sha_name(good))
    expect(page.locator("#f-max_seq_length")).to_have_value("48")


def _sha_name(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() + ".jsonl"


def test_compare_overlays_runs_and_lists_differences(stack: Stack, page: Page) -> None:
    a = stack.start_run(name="cmp-a", max_steps=6, learning_rate=1e-3)
    b = stack.start_run(name="cmp-b", max_steps=6, learning_rate=5e-4)
    stack.wait_run(a["id"])
    stack.wait_run(b["id"])
    page.goto(stack.url + "/compare")
    page.check(f'input[value="{a["id"]}"]')
    page.check(f'input[value="{b["id"]}"]')
    page.click("#compare-button")
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
    rows = page.locator("#differences tbody tr")
    expect(rows.locator("th")).to_have_text(["name", "learning_rate"])
    expect(rows.nth(1)).to_contain_text("0.001")
    shot(page, "compare")


def test_workers_view_shows_what_each_worker_runs(stack: Stack, page: Page) -> None:
    run = stack.start_run(name="busy", max_steps=60)
    page.goto(stack.url + "/workers")
    expect(page.locator("tr[data-worker]")).to_have_count(3)  # trainer, inspector, generator
    expect(page.locator("tr[data-worker]").filter(has_text="merge, train")).to_contain_text(
        f"training {run['id']}", timeout=120_000
    )
    expect(page.locator("tr[data-worker]").filter(has_text="inspect")).to_contain_text("idle")
    expect(page.locator("tr[data-worker]").filter(has_text="generate")).to_contain_text("idle")
    shot(page, "workers")
    httpx.post(f"{stack.url}/api/v1/runs/{run['id']}/cancel", timeout=30)
    stack.wait_run(run["id"])


def test_a_100k_point_run_is_drawn_without_sending_every_point(stack: Stack, page: Page) -> None:
    engine = create_engine(stack.database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(Run),
            [{"id": "big", "name": "100k points", "status": "succeeded", "spec": {"method": "qlora"},
              "step": 100_000, "max_steps": 100_000, "cancel_requested": False}],
        )  # fmt: skip
        rows = [
            {"run_id": "big", "step": s, "kind": "train", "time": s * 0.1, "loss": 2 / (1 + s / 1000)}
            for s in range(1, 100_001)
        ]
        connection.execute(insert(Metric), rows)
    sent: list[int] = []
    page.on("response", lambda r: sent.append(len(json.loads(r.body()))) if "/metrics" in r.url else None)
    page.goto(stack.url + "/runs/big")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) > 0")
    drawn = points(page)
    assert 1000 <= drawn <= 2001, drawn  # an even sample of 2000, plus the newest point
    assert sent == [drawn] and sent[0] < 100_000
    shot(page, "run-100k")


@pytest.mark.parametrize("width", [1280, 1920])
def test_pages_fit_laptop_and_wide_screens(stack: Stack, page: Page, width: int) -> None:
    run = stack.start_run(name="layout", max_steps=3)
    stack.wait_run(run["id"])
    page.set_viewport_size({"width": width, "height": 900})
    for path in ("/", "/runs/new", f"/runs/{run['id']}", "/datasets", f"/compare?runs={run['id']}", "/workers"):
        page.goto(stack.url + path)
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than a {width} px window"
    shot(page, f"run-page-{width}")


def test_the_estimate_card_follows_the_form(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/runs/new")
    trainable = page.locator("#estimate-trainable")
    expect(trainable).not_to_be_empty(timeout=60_000)  # the inspect worker answers from config.json alone
    before = trainable.inner_text()
    expect(page.locator('#estimate-memory tr[data-part="activations"]')).to_be_visible()
    rank = int(page.locator("#f-r").input_value())
    page.fill("#f-r", str(4 * rank))
    expect(trainable).not_to_have_text(before, timeout=30_000)
    assert int(trainable.inner_text().replace(",", "")) == 4 * int(before.replace(",", ""))  # LoRA params grow with r
    page.fill("#f-r", "0")
    expect(page.locator("#estimate")).to_contain_text("greater than or equal to 1", timeout=30_000)
    shot(page, "new-run-estimate")
