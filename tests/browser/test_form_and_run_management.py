"""The new-run form as a practitioner uses it (sections, pickers, errors at the field in one round trip),
and runs they can manage (stop and save, delete, archive), at 1280 and 390 px wide."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import create_engine, func, select

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.models import Artifact, Metric
from tests.browser.test_pages import shot
from tests.conftest import QUICK_RUN, Stack

pytestmark = pytest.mark.slow
WIDTHS = [1280, 390]


@pytest.fixture(params=WIDTHS, ids=lambda width: f"{width}px")
def sized(browser: Browser, request: pytest.FixtureRequest) -> Any:
    context = browser.new_context(viewport={"width": request.param, "height": 900}, accept_downloads=True)
    page = context.new_page()
    yield page
    context.close()


def width(page: Page) -> int:
    return int((page.viewport_size or {"width": 0})["width"])


def narrow(browser: Browser) -> Any:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    return context, context.new_page()


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px viewport"


def run_count(stack: Stack) -> int:
    return len(httpx.get(stack.url + "/api/v1/runs?limit=1000", timeout=30).json())


def test_sections_and_fields_per_method(stack: Stack, sized: Page) -> None:
    page = sized
    page.goto(stack.url + "/runs/new")
    legends = page.locator("fieldset.form-section legend")
    expect(legends).to_have_text(
        [
            "Model and data",
            "Objective",
            "Method",
            "LoRA",
            "Quantization",
            "Schedule",
            "Speed",
            "Evaluation",
            "Checkpoints and placement",
        ]
    )
    # A human label, the RunSpec name beside it in monospace; the input keeps its id.
    label = page.locator('label[for="f-per_device_train_batch_size"]')
    expect(label).to_contain_text("Batch size per device")
    expect(label.locator("code.spec-name")).to_have_text("per_device_train_batch_size")
    # qlora (the default): LoRA and 4-bit options shown, prompt tuning's hidden.
    expect(page.locator("#f-r")).to_be_visible()
    expect(page.locator("#f-bnb_4bit_quant_type")).to_be_visible()
    expect(page.locator("#f-num_virtual_tokens")).to_be_hidden()
    page.select_option("#f-method", "lora")
    expect(page.locator("#f-bnb_4bit_quant_type")).to_be_hidden()
    expect(page.locator("#section-quantization")).to_be_visible()  # quantization itself still applies
    page.select_option("#f-quantization", "4bit")
    expect(page.locator("#f-bnb_4bit_quant_type")).to_be_visible()
    page.select_option("#f-quantization", "none")
    page.select_option("#f-method", "prompt_tuning")
    expect(page.locator("#section-lora")).to_be_hidden()
    expect(page.locator("#f-target_modules")).to_be_hidden()
    expect(page.locator("#f-num_virtual_tokens")).to_be_visible()
    page.select_option("#f-method", "ia3")
    expect(page.locator("#f-feedforward_modules")).to_be_visible()
    expect(page.locator("#f-r")).to_be_hidden()
    # Hidden fields are not submitted.
    sent = page.evaluate("Array.from(new FormData(document.getElementById('run-form')).keys())")
    assert "r" not in sent and "use_dora" not in sent and "num_virtual_tokens" not in sent
    assert "target_modules" in sent and "feedforward_modules" in sent and "learning_rate" in sent
    no_horizontal_scroll(page)
    shot(page, f"new-run-sections-{width(page)}")


def test_pickers_fill_dataset_and_local_model(
    stack: Stack, sized: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    page = sized
    models = tmp_path_factory.mktemp("my-models")
    local = models / f"my-tiny-llama-{width(page)}"
    shutil.copytree(TINY_MODEL_DIR, local)
    # Uploads are stored once by content: each width uploads a file of its own.
    rows = (
        (SAMPLE_DATASET_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()[: 20 + WIDTHS.index(width(page))]
    )
    upload = httpx.post(
        stack.url + "/api/v1/datasets",
        files={"file": ("addresses.jsonl", "\n".join(rows).encode(), "application/jsonl")},
        data={"name": f"picked addresses {width(page)}"},
        timeout=60,
    )
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    page.goto(stack.url + "/runs/new")
    option = page.locator("#pick-dataset option", has_text=f"picked addresses {width(page)}")
    expect(option).to_contain_text("rows")
    expect(option).to_contain_text("uploaded")
    expect(page.locator("#pick-dataset option", has_text="Bundled sample: Taiwanese addresses")).to_have_count(1)
    page.select_option("#pick-dataset", label=option.inner_text())
    expect(page.locator("#f-dataset")).to_have_value(dataset["path"])
    model = page.locator("#pick-base_model option", has_text=local.name)
    expect(model).to_contain_text("LlamaForCausalLM")
    expect(model).to_contain_text("MiB")
    page.select_option("#pick-base_model", value=str(local))
    expect(page.locator("#f-base_model")).to_have_value(str(local))
    # Typed values still count: the field is a plain text input.
    page.fill("#f-base_model", str(TINY_MODEL_DIR))
    expect(page.locator("#f-base_model")).to_have_value(str(TINY_MODEL_DIR))
    no_horizontal_scroll(page)


def test_unknown_target_module_answered_at_the_field(stack: Stack, sized: Page) -> None:
    page = sized
    before = run_count(stack)
    page.goto(stack.url + "/runs/new")
    page.select_option("#f-method", "lora")
    page.select_option("#f-quantization", "none")
    page.fill("#f-target_modules", "q_proj, foo_proj")
    page.click("#start-run")
    error = page.locator('.error[data-field="target_modules"]')
    expect(error).to_contain_text("foo_proj not found", timeout=30_000)
    expect(error).to_contain_text("q_proj")  # the model's own module names, to pick from
    expect(error).to_contain_text("v_proj")
    expect(page.locator("#f-target_modules")).to_be_focused()
    expect(page.locator("#f-target_modules")).to_have_value("q_proj, foo_proj")
    assert run_count(stack) == before, "a run was created"
    # The API refuses it the same way, at the field.
    body = QUICK_RUN | {"method": "lora", "quantization": "none", "target_modules": ["q_proj", "foo_proj"]}
    refused = httpx.post(stack.url + "/api/v1/runs", json=body, timeout=30)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"][-1] == "target_modules"
    assert run_count(stack) == before


def test_two_field_error_under_both_fields_in_one_round_trip(stack: Stack, sized: Page) -> None:
    page = sized
    before = run_count(stack)
    page.goto(stack.url + "/runs/new")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/runs") else None)
    page.fill("#f-r", "0")  # a field error ...
    page.fill("#f-max_steps", "0")  # ... and a rule over two fields, max_steps and num_train_epochs
    page.click("#start-run")
    expect(page.locator('.error[data-field="r"]')).to_contain_text("greater than or equal to 1")
    expect(page.locator('.error[data-field="max_steps"]')).to_contain_text("0 trains nothing")
    expect(page.locator('.error[data-field="num_train_epochs"]')).to_contain_text("0 trains nothing")
    assert len(posts) == 1, posts
    expect(page.locator("#f-r")).to_be_focused()  # the first field in error
    expect(page.locator("#f-max_steps")).to_have_value("0")
    assert run_count(stack) == before
    no_horizontal_scroll(page)
    shot(page, f"new-run-two-field-error-{width(page)}")


def test_stop_mid_run_gives_a_stopped_run_whose_adapter_merges(stack: Stack, page: Page) -> None:
    run = stack.start_run(name="stop me", method="lora", quantization="none", max_steps=400)
    page.goto(f"{stack.url}/runs/{run['id']}")
    stack.wait_run(run["id"], lambda r: r["status"] == "running" and r["step"] >= 2)
    # Still running: delete is refused.
    assert httpx.delete(f"{stack.url}/api/v1/runs/{run['id']}", timeout=30).status_code == 409
    page.reload()
    page.click("#stop-run")
    expect(page.locator("#run-status")).to_have_text("stopped", timeout=120_000)
    stopped = stack.wait_run(run["id"], lambda r: r["status"] == "stopped")
    assert 2 <= stopped["step"] < 400
    checkpoints = httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/checkpoints", timeout=30).json()
    assert checkpoints and checkpoints[-1]["step"] == stopped["step"], checkpoints
    artifacts = httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/artifacts", timeout=30).json()
    adapter = next(a for a in artifacts if a["kind"] == "adapter")
    assert adapter["status"] == "ready"
    download = httpx.get(stack.url + adapter["download_url"] + "?file=adapter_config.json", timeout=30)
    assert download.status_code == 200 and json.loads(download.content)["peft_type"] == "LORA"
    page.reload()
    page.click("#merge-button")
    expect(page.locator("#download-merged")).to_be_visible(timeout=180_000)
    shot(page, "run-stopped-merged")


def test_delete_and_archive_at_390px(stack: Stack, browser: Browser) -> None:
    keep = stack.start_run(name="archive me", max_steps=2)
    doomed = stack.start_run(name="delete me", max_steps=3, save_steps=2)
    for run in (keep, doomed):
        stack.wait_run(run["id"], lambda r: r["status"] == "succeeded", timeout=240)
    run_dir = stack.data_dir / "runs" / doomed["id"]
    assert (run_dir / "adapter").is_dir()
    live = redis.Redis.from_url(stack.env["REDIS_URL"])
    its_keys = f"loradeck:run:{doomed['id']}:*"
    assert len(live.keys(its_keys)) == 2  # its event stream and the stream's senders
    context, page = narrow(browser)
    try:
        page.goto(stack.url + "/")
        expect(page.locator(f'tr[data-run-id="{doomed["id"]}"]')).to_be_visible()
        no_horizontal_scroll(page)
        shot(page, "runs-list-390")
        page.goto(f"{stack.url}/runs/{doomed['id']}")
        no_horizontal_scroll(page)
        shot(page, "run-page-390")
        page.click("#delete-run")
        # The confirmation names what goes: the directory, what it holds, the rows.
        what = page.locator("#delete-what")
        expect(what).to_contain_text(str(run_dir))
        expect(what).to_contain_text("adapter")
        expect(what).to_contain_text("metric point")
        page.click("#confirm-delete")
        expect(page).to_have_url(stack.url + "/")
        expect(page.locator(f'tr[data-run-id="{doomed["id"]}"]')).to_have_count(0)
        assert not run_dir.exists()
        assert httpx.get(f"{stack.url}/api/v1/runs/{doomed['id']}", timeout=30).status_code == 404
        assert live.keys(its_keys) == []
        engine = create_engine(stack.database_url)
        with engine.connect() as connection:
            for table in (Metric, Artifact):
                count = connection.scalar(select(func.count()).select_from(table).where(table.run_id == doomed["id"]))
                assert count == 0, table
        engine.dispose()

        # Archive: hidden from the list and the compare picker, kept (and listed with ?archived=true).
        page.goto(f"{stack.url}/runs/{keep['id']}")
        page.click("#archive-run")
        expect(page.locator("#run-archived")).to_be_visible()
        page.goto(stack.url + "/")
        expect(page.locator(f'tr[data-run-id="{keep["id"]}"]')).to_have_count(0)
        page.goto(stack.url + "/compare")
        expect(page.locator(f'input[value="{keep["id"]}"]')).to_have_count(0)
        archived = httpx.get(stack.url + "/api/v1/runs?archived=true", timeout=30).json()
        assert [r["id"] for r in archived] == [keep["id"]]
        assert Path(stack.data_dir / "runs" / keep["id"]).is_dir()
        page.goto(stack.url + "/runs/new")
        no_horizontal_scroll(page)
        shot(page, "new-run-390")
    finally:
        context.close()


def test_compare_picker_smoothing_and_export(stack: Stack, page: Page) -> None:
    first = stack.start_run(name="twin", max_steps=3)
    second = stack.start_run(name="twin", max_steps=3, learning_rate=1e-3)
    for run in (first, second):
        stack.wait_run(run["id"], lambda r: r["status"] == "succeeded", timeout=240)
    page.goto(stack.url + "/compare")
    # Two runs of one name are told apart by id, date, status and final loss.
    for run in (first, second):
        entry = page.locator(f'label.check[data-run-id="{run["id"]}"]')
        expect(entry).to_contain_text(run["id"])
        expect(entry).to_contain_text("succeeded")
        expect(entry).to_contain_text("final loss")
        entry.locator("input").check()
    page.click("#compare-button")
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2", timeout=30_000)
    page.locator("#compare-smoothing").fill("0.8")
    expect(page.locator("#compare-smoothing-value")).to_have_text("0.80")
    with page.expect_download() as csv_download:
        page.click("#export-csv")
    lines = Path(csv_download.value.path()).read_text().splitlines()
    assert lines[0].startswith("run_id,run_name,step,kind")
    assert {line.split(",")[0] for line in lines[1:]} == {first["id"], second["id"]}
    exported = httpx.get(f"{stack.url}/compare/export?runs={first['id']},{second['id']}&format=json", timeout=30)
    assert {row["run_id"] for row in exported.json()} == {first["id"], second["id"]}
