"""The smaller things a browser tour met (issue 24, item 8): the evaluation's counts agree, the playground's
expected answer goes with its eval row, missing pages are pages, the compare chart keeps a lone eval point
inside the plot, names with bidirectional controls show what they hold, and the API docs are linked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import create_engine, insert

from app.config import SAMPLE_DATASET_DIR
from app.models import Run
from tests.browser.test_pages import shot
from tests.conftest import Stack

pytestmark = pytest.mark.slow
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "ab" RLO "cd" reads "abdc"


@pytest.fixture(scope="module")
def evaluated(stack: Stack) -> dict[str, Any]:
    """Two finished runs of the same length; the first scored on 3 eval rows and 1 regression prompt."""
    first = stack.start_run(name="scored", max_steps=3, task_eval_rows=3, regression_prompts=["Say hi."])
    second = stack.start_run(name="twin", max_steps=3)
    stack.wait_run(second["id"])
    return stack.wait_run(first["id"])


def test_the_evaluating_phase_and_the_card_count_the_same_prompts(stack: Stack, page: Page) -> None:
    run = stack.start_run(name="counted", max_steps=3, task_eval_rows=3, regression_prompts=["Say hi."])
    page.goto(f"{stack.url}/runs/{run['id']}")
    count = page.locator("#evaluation-count")
    expect(count).to_contain_text("4 prompts on each side", timeout=240_000)
    expect(count).to_contain_text("3 eval rows and 1 regression prompt")
    expect(page.locator("#task-metrics")).to_contain_text("3")
    # The phase that came before counted the same prompts (its figures stay in the page once it is over).
    assert page.locator("#eval-total").text_content() == "4"


def test_the_expected_answer_goes_when_the_prompt_is_the_users_own(
    stack: Stack, evaluated: dict[str, Any], page: Page
) -> None:
    page.goto(f"{stack.url}/runs/{evaluated['id']}/playground")
    page.click("#try-eval-row")
    expect(page.locator("#expected-card")).to_be_visible()
    page.fill("#prompt", "A question of my own")
    expect(page.locator("#expected-card")).to_be_hidden()
    page.click("#try-eval-row")
    expect(page.locator("#expected-card")).to_be_visible()


def test_a_missing_run_is_a_page_and_the_api_still_answers_json(stack: Stack, page: Page) -> None:
    answer = page.goto(f"{stack.url}/runs/no-such-run")
    assert answer is not None and answer.status == 404
    assert answer.headers["content-type"].startswith("text/html")
    expect(page.locator("#error-title")).to_have_text("Not found")
    expect(page.locator("#error-message")).to_contain_text("no-such-run")
    expect(page.locator("nav")).to_contain_text("Runs")  # the usual page, with its way back
    shot(page, "not-found")
    page.goto(f"{stack.url}/no/such/page")
    expect(page.locator("#error-title")).to_have_text("Not found")
    api = httpx.get(f"{stack.url}/api/v1/runs/no-such-run", timeout=30)
    assert api.status_code == 404 and "no-such-run" in api.json()["detail"]


def test_compare_draws_lone_eval_points_inside_the_plot(stack: Stack, evaluated: dict[str, Any], page: Page) -> None:
    twin = next(r for r in httpx.get(f"{stack.url}/api/v1/runs", timeout=30).json() if r["name"] == "twin")
    page.goto(f"{stack.url}/compare?runs={evaluated['id']},{twin['id']}")
    chart = page.locator("#compare-chart")
    expect(chart).to_have_attribute("data-series", "2", timeout=30_000)
    page.select_option("#compare-metric", "eval")
    # Both runs measured their eval loss once, at step 3: the x range holds step 3 inside it, not at a collapsed edge.
    expect(chart).to_have_attribute("data-metric", "eval")
    x_min, x_max = float(chart.get_attribute("data-x-min") or "nan"), float(chart.get_attribute("data-x-max") or "nan")
    assert x_min < 3 < x_max, (x_min, x_max)
    shot(page, "compare-eval-loss")


def test_names_with_bidirectional_controls_show_what_they_hold(stack: Stack, page: Page, tmp_path: Path) -> None:
    engine = create_engine(stack.database_url)
    with engine.begin() as connection:  # a run named before names were checked (the API refuses such names now)
        connection.execute(
            insert(Run),
            [{"id": "bidi", "name": f"ab{RLO}cd", "status": "succeeded", "spec": {"method": "lora"},
              "step": 1, "max_steps": 1, "cancel_requested": False}],
        )  # fmt: skip
    engine.dispose()
    for url, where in (("/", "main"), ("/runs/bidi", "h1"), ("/compare?runs=bidi", "main")):
        page.goto(stack.url + url)
        shown = page.locator(where).inner_text()
        assert RLO not in shown and "ab\\u202ecd" in shown, (url, shown)
        assert RLO not in page.title(), url
    # An upload named so: its page, or the refusal, shows the control escaped.
    data = tmp_path / "rows.jsonl"
    data.write_bytes((SAMPLE_DATASET_DIR / "eval.jsonl").read_bytes())
    page.goto(stack.url + "/datasets")
    page.fill("#upload-name", f"ab{RLO}cd")
    page.set_input_files("#upload-file", str(data))
    expect(page.locator("#upload-error").or_(page.locator("h1", has_text="ab"))).to_be_visible(timeout=60_000)
    shown = page.locator("main").inner_text()
    assert RLO not in shown, shown
    if "/datasets/" in page.url:
        expect(page.locator("h1")).to_have_text("ab\\u202ecd")
        page.goto(stack.url + "/datasets")
        assert RLO not in page.locator("main").inner_text()
        shot(page, "bidi-names")


def test_the_api_docs_are_linked_from_every_page(stack: Stack, page: Page) -> None:
    page.goto(stack.url + "/datasets")
    page.locator("nav").get_by_role("link", name="API").click()
    expect(page).to_have_url(stack.url + "/api/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)


def test_the_run_spec_is_copied_as_json_cli_and_curl_that_start_it_again(
    stack: Stack, evaluated: dict[str, Any], page: Page, tmp_path: Path
) -> None:
    from worker.cli import read_spec_file

    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page.goto(f"{stack.url}/runs/{evaluated['id']}")
    assert json.loads(page.locator("#spec-json").text_content() or "") == evaluated["spec"]
    page.click("#spec-card summary")
    page.click("#copy-spec-curl")
    expect(page.locator("#copy-spec-curl")).to_have_text("Copied")
    curl = page.evaluate("navigator.clipboard.readText()")
    assert curl == page.locator("#spec-curl").text_content()
    # The copied command, run in a shell, queues the same run on this server.
    answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True)
    again = json.loads(answer.stdout)
    assert again["id"] != evaluated["id"] and again["spec"] == evaluated["spec"]
    httpx.post(f"{stack.url}/api/v1/runs/{again['id']}/cancel", timeout=30)
    # The CLI's: the here-document writes the spec file that `loradeck train` reads.
    cli = page.locator("#spec-cli").text_content() or ""
    *write, command = cli.splitlines()
    assert command == "loradeck train spec.json"
    subprocess.run(["bash", "-c", "\n".join(write)], cwd=tmp_path, check=True, timeout=30)
    assert read_spec_file(tmp_path / "spec.json").model_dump(mode="json") == evaluated["spec"]
