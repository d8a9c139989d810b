"""A preference file described for the dataset page: its shape, the prompt shown once and each answer with the
tokens the loss falls on, the length of each part, and what max_seq_length cuts (tiny model's tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.config import TINY_MODEL_DIR
from worker.data.describe import describe_dataset

# bos + "2+2=" is 5 tokens, bos + "Capital of France?" 10; "4", "5" are 1 token (+ eos), "Paris", "London" 4 (+ eos).
PAIRS = [
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "London"},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


def _described(tmp_path: Path, tokenizer: PreTrainedTokenizerBase, rows: list[Any], **kwargs: Any) -> dict[str, Any]:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return describe_dataset(path, tokenizer, **kwargs).model_dump(mode="json")


def test_a_pair_file_shows_the_prompt_once_and_marks_both_answers(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    described = _described(tmp_path, tokenizer, PAIRS, max_seq_length=12)

    assert (described["shape"], described["rows"], described["fields"]) == (
        "preference",
        2,
        ["prompt", "chosen", "rejected"],
    )
    first = described["examples"][0]
    assert first["segments"] == [{"text": "<s>2+2=", "trained": False}]
    assert [(a["name"], a["tokens"], a["segments"]) for a in first["answers"]] == [
        ("chosen", 2, [{"text": "4</s>", "trained": True}]),
        ("rejected", 2, [{"text": "5</s>", "trained": True}]),
    ]
    assert {name: part["tokens"]["max"] for name, part in described["parts"].items()} == {
        "prompt": 10,
        "chosen": 5,
        "rejected": 5,
    }
    assert sum(described["parts"]["rejected"]["histogram"]["counts"]) == 2
    # A row is as long as its prompt and its longer answer; the second (15 tokens) is cut at 12, leaving 2 tokens
    # of each answer to learn from.
    assert described["tokens"]["max"] == 15 and described["truncated_rows"] == 1
    assert (described["dropped_rows"], described["trained_tokens"]) == (0, 2 + 2 + 2 + 2)


def test_a_prompt_that_fills_max_seq_length_drops_its_pair(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    described = _described(tmp_path, tokenizer, PAIRS, max_seq_length=10)

    assert (described["dropped_rows"], described["trained_tokens"]) == (1, 4)
    assert [example["line"] for example in described["examples"]] == [1]


def test_unpaired_rows_show_the_completion_with_its_label(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [
        {"prompt": "2+2=", "completion": "4", "label": True},
        {"prompt": "2+2=", "completion": "5", "label": False},
    ]

    described = _described(tmp_path, tokenizer, rows, max_seq_length=64)

    assert described["shape"] == "unpaired" and described["labels"] == {"good": 1, "bad": 1}
    assert list(described["parts"]) == ["prompt", "completion"]
    assert [(a["name"], a["label"], a["segments"]) for e in described["examples"] for a in e["answers"]] == [
        ("completion", True, [{"text": "4</s>", "trained": True}]),
        ("completion", False, [{"text": "5</s>", "trained": True}]),
    ]


def test_an_openai_pair_is_rendered_through_the_chat_template(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    row = {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "Paris"}],
        "non_preferred_output": [{"role": "assistant", "content": "London"}],
    }

    described = _described(tmp_path, tokenizer, [row], max_seq_length=512, chat_template="zephyr")

    assert (described["shape"], described["chat_template"]) == ("preference", "zephyr")
    example = described["examples"][0]
    assert "".join(s["text"] for s in example["segments"]) == "<s><|user|>\nCapital of France?</s>\n<|assistant|>\n"
    assert not any(s["trained"] for s in example["segments"])
    assert [[s["text"] for s in a["segments"] if s["trained"]] for a in example["answers"]] == [
        ["Paris</s>"],
        ["London</s>"],
    ]
