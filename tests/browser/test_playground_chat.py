"""The playground's chat, for a run trained on messages rows: a system prompt and turns, each side with its own
history, formatted by the generate worker with the run's chat template exactly as training formatted it."""

from __future__ import annotations

import json
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

pytestmark = pytest.mark.slow
SYSTEM = "You answer in one word."
FIRST = "Capital of France?"
SECOND = "And of Japan?"
ROWS = [
    [("Capital of France?", "Paris"), ("And of Japan?", "Tokyo")],
    [("Capital of Italy?", "Rome"), ("And of Spain?", "Madrid")],
    [("Say hi.", "Hi!"), ("Again.", "Hi!")],
    [("Colour of the sky?", "Blue"), ("And of grass?", "Green")],
]
NEW = 16  # tokens an answer may take


@pytest.fixture(scope="module")
def trained(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short run on conversations, with zephyr as its chat template (not the tiny model's own)."""
    dataset = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    with dataset.open("w", encoding="utf-8") as out:
        for exchanges in ROWS * 2:
            turns = [{"role": "system", "content": SYSTEM}]
            for asked, answer in exchanges:
                turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]
            out.write(json.dumps({"messages": turns}) + "\n")
    run = stack.start_run(
        name="chat", method="lora", dataset=str(dataset), chat_template="zephyr", max_steps=6, learning_rate=5e-3
    )
    finished = stack.wait_run(run["id"])
    assert finished["status"] == "succeeded", finished["error"]
    return finished


def _ask(stack: Stack, request: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The worker's start event and both answers of one request."""
    reply = httpx.post(f"{stack.url}/api/v1/playground", json=request, timeout=30)
    assert reply.status_code == 202, reply.text
    with (
        httpx.Client(timeout=120) as client,
        open_stream(client, stack.url + reply.json()["events"], until=("done", "error")) as stream,
    ):
        events = [(event.name, event.data) for event in stream]
    assert events[0][0] == "start" and events[-1][0] == "done", events
    return events[0][1], events[-1][1]["texts"]


def _greedy(model: Any, text: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_the_worker_formats_a_two_turn_conversation_with_the_runs_template_each_side_its_own(
    stack: Stack, trained: dict[str, Any]
) -> None:
    opening = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FIRST}]
    request = {"run_id": trained["id"], "max_new_tokens": NEW}
    _, (base_first, adapter_first) = _ask(stack, request | {"messages": opening})
    conversation = [*opening, {"role": "assistant", "content": adapter_first}, {"role": "user", "content": SECOND}]
    start, (base_second, adapter_second) = _ask(
        stack, request | {"messages": conversation, "base_answers": [base_first]}
    )
    # zephyr's markup, the system prompt, and each side's own first answer: what the worker gave each model.
    turns = f"<s><|system|>\n{SYSTEM}</s>\n<|user|>\n{FIRST}</s>\n<|assistant|>\n{{}}</s>\n"
    ending = f"<|user|>\n{SECOND}</s>\n<|assistant|>\n"
    assert start["sides"] == ["base", "adapter"]
    assert start["prompts"] == [turns.format(base_first) + ending, turns.format(adapter_first) + ending]
    # And the models answered those very texts: greedy decoding of them here gives the same answers.
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR).eval()
    adapter = PeftModel.from_pretrained(base, str(stack.data_dir / "runs" / trained["id"] / "adapter")).eval()
    assert _greedy(adapter, start["prompts"][1]) == adapter_second
    with adapter.disable_adapter():
        assert _greedy(adapter, start["prompts"][0]) == base_second
    assert adapter_first != base_first  # the sides did differ, so each history is its own


def _exchange(page: Page, index: int) -> Any:
    return page.locator("#transcript .exchange").nth(index)


def _send(page: Page, message: str, index: int) -> None:
    page.fill("#message", message)
    page.click("#generate")
    for side in ("0", "1"):
        pane = _exchange(page, index).locator(f'.answer[data-side="{side}"]')
        expect(pane).to_have_attribute("data-done", "1", timeout=90_000)


def test_a_chat_with_a_system_prompt_two_turns_and_a_new_chat(
    stack: Stack, page: Page, trained: dict[str, Any]
) -> None:
    page.goto(f"{stack.url}/runs/{trained['id']}/playground")
    expect(page.locator("#chat-help")).to_contain_text("each message goes to both models with the whole conversation")
    expect(page.locator("#chat")).to_have_count(0)  # a conversation always goes through the run's template
    page.fill("#max_new_tokens", str(NEW))
    page.fill("#system", SYSTEM)

    # Hidden characters are refused as in a prompt, and the message stays in the box.
    page.fill("#message", "a\u202eb")
    page.click("#generate")
    expect(page.locator("#playground-error")).to_contain_text("content: contains invisible control characters (U+202E)")
    expect(page.locator("#message")).to_have_value("a\u202eb")
    expect(page.locator("#transcript .exchange")).to_have_count(0)

    _send(page, FIRST, 0)
    expect(page.locator("#playground-error")).to_be_hidden()
    expect(page.locator("#message")).to_have_value("")
    expect(page.locator("#system")).not_to_be_editable()  # part of the history now
    _send(page, SECOND, 1)
    shot(page, "playground-chat")

    # The transcript: the system prompt, then each message over both sides' answers, in order.
    expect(page.locator("#transcript > li")).to_have_count(3)
    expect(page.locator("#transcript .turn-system .said")).to_have_text(SYSTEM)
    expect(page.locator("#transcript .exchange .said")).to_have_text([FIRST, SECOND])
    expect(_exchange(page, 1).locator(".side-title")).to_have_text(["base", "adapter"])
    first = [_exchange(page, 0).locator(f'.answer[data-side="{s}"]').inner_text() for s in "01"]
    second = [_exchange(page, 1).locator(f'.answer[data-side="{s}"]').inner_text() for s in "01"]
    # The second turn went with the whole history, each side's own: what each model was given says so.
    for side in (0, 1):
        given = _exchange(page, 1).locator(f'.given pre[data-side="{side}"]').text_content() or ""
        assert given.startswith(f"<s><|system|>\n{SYSTEM}</s>\n<|user|>\n{FIRST}</s>\n<|assistant|>\n{first[side]}")
        assert given.endswith(f"<|user|>\n{SECOND}</s>\n<|assistant|>\n")
    # The same as the API answers for the same conversation: the page sent exactly that.
    opening = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FIRST}]
    conversation = [*opening, {"role": "assistant", "content": first[1]}, {"role": "user", "content": SECOND}]
    request = {"run_id": trained["id"], "max_new_tokens": NEW}
    assert _ask(stack, request | {"messages": opening})[1] == first
    assert _ask(stack, request | {"messages": conversation, "base_answers": [first[0]]})[1] == second

    # Past the conversation's bounds: said before sending, the message kept.
    page.evaluate("document.getElementById('playground-form').dataset.maxTurns = '5'")
    page.fill("#message", "A third question?")
    page.click("#generate")
    expect(page.locator("#playground-error")).to_contain_text("would have 6 turns, more than the 5 one request takes")
    expect(page.locator("#message")).to_have_value("A third question?")
    expect(page.locator("#transcript .exchange")).to_have_count(2)

    # New chat: an empty transcript, the system prompt editable again, and the next message starts afresh.
    page.click("#new-chat")
    expect(page.locator("#transcript > li")).to_have_count(0)
    expect(page.locator("#system")).to_be_editable()
    expect(page.locator("#playground-error")).to_be_hidden()
    _send(page, FIRST, 0)
    expect(page.locator("#transcript .exchange")).to_have_count(1)
    again = [_exchange(page, 0).locator(f'.answer[data-side="{s}"]').inner_text() for s in "01"]
    assert again == first  # greedy, with no history left over: the first turn's answers again
