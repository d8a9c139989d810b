"""The playground on the whole stack: answers stream in side by side, from a worker of their own."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from playwright.sync_api import Page, expect
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import TINY_MODEL_DIR
from tests.browser.test_pages import shot
from tests.conftest import Stack
from tests.sse import open_stream
from worker.serving.decoding import chat_prompt

pytestmark = pytest.mark.slow
PROMPT = "解析地址：臺中市西屯區市政路500號\n"


@pytest.fixture(scope="module")
def trained(stack: Stack) -> dict[str, Any]:
    run = stack.start_run(name="playground", method="lora", max_steps=12, learning_rate=5e-3, save_steps=6)
    finished = stack.wait_run(run["id"])
    assert finished["status"] == "succeeded", finished["error"]
    return finished


def _greedy(model: Any, prompt: str, new: int) -> str:
    # As the run trained: the sample's prompt/completion rows go in without the chat template, and so does
    # the playground's prompt by default.
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    ids = torch.tensor([chat_prompt(tokenizer, prompt, chat=False)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_both_answers_stream_in_and_greedy_matches_generate(stack: Stack, page: Page, trained: dict[str, Any]) -> None:
    page.goto(f"{stack.url}/runs/{trained['id']}")
    page.click("#open-playground")
    expect(page.locator("#chat")).not_to_be_checked()
    page.fill("#prompt", PROMPT)
    page.fill("#max_new_tokens", "32")
    page.click("#generate")
    for side in ("0", "1"):
        expect(page.locator(f"#answer-{side}")).to_have_attribute("data-done", "1", timeout=90_000)
    shot(page, "playground")
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR).eval()
    expected_base = _greedy(base, PROMPT, 32)
    adapter = PeftModel.from_pretrained(base, str(stack.data_dir / "runs" / trained["id"] / "adapter")).eval()
    expected_adapter = _greedy(adapter, PROMPT, 32)
    assert expected_base != expected_adapter
    assert page.locator("#side-1-title").inner_text() == "adapter"
    for side, expected in (("0", expected_base), ("1", expected_adapter)):
        pane = page.locator(f"#answer-{side}")
        assert pane.inner_text() == expected
        assert int(pane.get_attribute("data-events") or 0) > 5  # grew over many events, not in one


def _follow(url: str, timeout: float = 120) -> list[tuple[str, dict[str, Any]]]:
    with httpx.Client(timeout=timeout) as client, open_stream(client, url, until=("done", "error")) as events:
        return [(event.name, event.data) for event in events]


def test_a_playground_request_during_a_training_run_neither_waits_for_it_nor_disturbs_it(
    stack: Stack, trained: dict[str, Any]
) -> None:
    busy = stack.start_run(name="busy", method="lora", max_steps=150, per_device_train_batch_size=2)
    stack.wait_run(busy["id"], lambda run: run["step"] >= 3, timeout=120)
    request = {"run_id": trained["id"], "prompt": PROMPT, "max_new_tokens": 24, "compare": "checkpoint-6"}
    reply = httpx.post(f"{stack.url}/api/v1/playground", json=request, timeout=30)
    assert reply.status_code == 202, reply.text
    events = _follow(stack.url + reply.json()["events"])
    assert events[-1][0] == "done", events[-1]
    assert events[0][0] == "start" and events[0][1]["sides"] == ["base", "checkpoint-6"]
    assert events[0][1]["prompts"] == [f"<s>{PROMPT}"] * 2  # as the run trained: no chat template, bos in front
    # The answer came while the run trained on (it did not wait for the run's worker), and the pages answered.
    during = httpx.get(f"{stack.url}/api/v1/runs/{busy['id']}", timeout=30).json()
    assert during["status"] == "running" and during["step"] < 150
    assert httpx.get(f"{stack.url}/runs/{busy['id']}", timeout=30).status_code == 200
    finished = stack.wait_run(busy["id"])
    assert finished["status"] == "succeeded" and finished["step"] == 150
    metrics = httpx.get(f"{stack.url}/api/v1/runs/{busy['id']}/metrics", timeout=30).json()
    train_steps = [point["step"] for point in metrics if point["kind"] == "train"]
    assert train_steps == list(range(1, 151))  # every step logged once: nothing lost, nothing repeated


def test_a_request_for_what_the_run_lacks_names_what_it_has(stack: Stack, trained: dict[str, Any]) -> None:
    request = {"run_id": trained["id"], "prompt": "hi", "compare": "merged"}
    reply = httpx.post(f"{stack.url}/api/v1/playground", json=request, timeout=30)
    assert reply.status_code == 409
    assert "no merged" in reply.json()["detail"] and "checkpoint-12" in reply.json()["detail"]


def test_the_merged_model_answers_like_the_adapter(stack: Stack, trained: dict[str, Any]) -> None:
    merge = httpx.post(f"{stack.url}/api/v1/runs/{trained['id']}/merge", json={}, timeout=30)
    assert merge.status_code == 202, merge.text
    deadline = time.monotonic() + 180
    while httpx.get(f"{stack.url}/api/v1/runs/{trained['id']}/artifacts", timeout=30).json()[-1]["status"] != "ready":
        assert time.monotonic() < deadline, "the merge did not finish"
        time.sleep(0.5)
    answers = {}
    for compare in ("adapter", "merged"):
        request = {"run_id": trained["id"], "prompt": PROMPT, "max_new_tokens": 24, "compare": compare}
        reply = httpx.post(f"{stack.url}/api/v1/playground", json=request, timeout=30)
        assert reply.status_code == 202, reply.text
        events = _follow(stack.url + reply.json()["events"])
        assert events[-1][0] == "done", events[-1]
        answers[compare] = events[-1][1]["texts"]
    assert answers["merged"] == answers["adapter"]  # the same base text, and the merged weights answer alike
