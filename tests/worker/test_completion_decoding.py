"""OpenAI completions' decoding on the worker: one model, n choices, cut at stop sequences that are never sent in
part, finish_reason as OpenAI gives it; the greedy answer is the plain greedy loop's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import TINY_MODEL_DIR
from app.contracts.completions import CompletionJob
from worker.serving.completions import cut_at_stop, decode_choices, held_back
from worker.serving.decoding import chat_prompt, reference_greedy
from worker.serving.generate import Side

PROMPT = "解析地址：臺北市大安區復興南路一段390號2樓\n"


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


def _answer(tiny: tuple[Any, Any], **job: Any) -> tuple[list[Any], list[list[str]]]:
    model, tokenizer = tiny
    request = CompletionJob.model_validate({"model": "tiny-llama", "prompt": PROMPT} | job)
    pieces: list[list[str]] = [[] for _ in range(request.n)]
    ids = torch.tensor([chat_prompt(tokenizer, PROMPT, chat=False)])
    answers = decode_choices(Side("base", model, None), tokenizer, ids, request, lambda i, text: pieces[i].append(text))
    return answers, pieces


def test_stop_text_is_cut_and_what_might_start_it_is_held_back() -> None:
    assert cut_at_stop("abc}def", ["}"]) == ("abc", True)
    assert cut_at_stop("abc", ["cd"]) == ("ab", False)  # "c" may begin "cd"
    assert cut_at_stop("abX", ["cd", "X"]) == ("ab", True)
    assert cut_at_stop("ab", []) == ("ab", False)
    assert held_back("xx<en", ["<end>", "n<"]) == 3
    assert held_back("plain", ["<end>"]) == 0


def test_greedy_answer_is_the_plain_greedy_loops_and_runs_to_length(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    answers, pieces = _answer(tiny, temperature=0, max_tokens=24, n=2)
    expected = reference_greedy(model, tokenizer, chat_prompt(tokenizer, PROMPT, chat=False), max_new_tokens=24)
    assert [answer.text for answer in answers] == [expected, expected]
    assert ["".join(p) for p in pieces] == [expected, expected] and len(pieces[0]) > 3
    assert [answer.finish_reason for answer in answers] == ["length", "length"]
    assert answers[0].tokens == 24


def test_a_stop_sequence_ends_the_answer_before_it_and_is_never_streamed(tiny: tuple[Any, Any]) -> None:
    (whole,), _ = _answer(tiny, temperature=0, max_tokens=24)
    stop = whole.text[5:8]  # three characters in the middle of the greedy answer
    (cut,), (pieces,) = _answer(tiny, temperature=0, max_tokens=24, stop=[stop])
    assert cut.text == whole.text[: whole.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.tokens < 24
    assert "".join(pieces) == cut.text


def test_a_seed_gives_the_same_sample_and_each_choice_its_own(tiny: tuple[Any, Any]) -> None:
    first, _ = _answer(tiny, temperature=1.0, max_tokens=16, seed=7, n=2)
    again, _ = _answer(tiny, temperature=1.0, max_tokens=16, seed=7, n=2)
    assert [a.text for a in first] == [a.text for a in again]
    assert first[0].text != first[1].text
