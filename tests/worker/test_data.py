"""Prompt/completion rows -> token ids and labels: the loss must fall on the completion and eos only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.config import TINY_MODEL_DIR
from worker.data import IGNORE_INDEX, DatasetError, PadCollator, encode_row, load_dataset, read_rows

PROMPT = "解析地址：臺北市大安區復興南路一段390號2樓\n"
COMPLETION = '{"city":"臺北市","district":"大安區"}'


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_prompt_tokens_are_masked_and_completion_plus_eos_are_learned(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    prompt_ids, completion_ids = _ids(tokenizer, PROMPT), _ids(tokenizer, COMPLETION)
    example = encode_row(tokenizer, PROMPT, COMPLETION, max_seq_length=1024)

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert example["input_ids"] == [bos, *prompt_ids, *completion_ids, eos]
    assert example["labels"] == [IGNORE_INDEX] * (1 + len(prompt_ids)) + [*completion_ids, eos]
    learned = [label for label in example["labels"] if label != IGNORE_INDEX]
    assert tokenizer.decode(learned[:-1]) == COMPLETION
    assert learned[-1] == eos


def test_long_rows_are_cut_to_max_seq_length(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt_length = 1 + len(_ids(tokenizer, PROMPT))
    example = encode_row(tokenizer, PROMPT, COMPLETION, max_seq_length=prompt_length + 3)

    assert len(example["input_ids"]) == len(example["labels"]) == prompt_length + 3
    assert example["labels"][:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example["labels"][prompt_length:] == _ids(tokenizer, COMPLETION)[:3]
    assert tokenizer.eos_token_id not in example["input_ids"]


def test_rows_with_no_room_for_the_completion_are_skipped(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    short = json.dumps({"prompt": "臺北\n", "completion": "{}"}, ensure_ascii=False)
    long = json.dumps({"prompt": PROMPT * 4, "completion": COMPLETION}, ensure_ascii=False)
    path = _write_jsonl(tmp_path / "train.jsonl", [short, long])

    assert len(load_dataset(path, tokenizer, max_seq_length=32)) == 1
    with pytest.raises(DatasetError, match="max_seq_length"):
        load_dataset(_write_jsonl(tmp_path / "only_long.jsonl", [long]), tokenizer, max_seq_length=32)


@pytest.mark.parametrize(
    ("bad_line", "why"),
    [
        ('{"prompt": "解析地址：臺北市\\n"', "not valid JSON"),
        ('{"prompt": "解析地址：臺北市\\n"}', "missing completion"),
        ('{"prompt": "x", "completion": 3}', "completion must be a string"),
        ('{"prompt": "x", "completion": ""}', "completion is empty"),
        ('["x", "y"]', "expected a JSON object"),
    ],
)
def test_a_bad_line_is_reported_with_its_file_and_line_number(tmp_path: Path, bad_line: str, why: str) -> None:
    good = json.dumps({"prompt": PROMPT, "completion": COMPLETION}, ensure_ascii=False)
    path = _write_jsonl(tmp_path / "train.jsonl", [good, "", bad_line, good])

    with pytest.raises(DatasetError, match=rf"train\.jsonl line 3: {why}"):
        read_rows(path)


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no rows"):
        read_rows(_write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_collator_pads_ids_masks_labels_and_builds_attention_mask() -> None:
    batch = PadCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )

    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
