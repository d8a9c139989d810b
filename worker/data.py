"""Prompt/completion JSONL -> token ids with the loss on the completion only, and the batch collator.

Each row becomes `bos + prompt + completion + eos`. The prompt and the completion are tokenized
separately and their ids concatenated, so the boundary between "given" and "to learn" is exact
(tokenizing the joined text can merge the last prompt character with the first completion one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value torch's cross entropy skips


class DatasetError(ValueError):
    """A dataset file the trainer cannot use; the message names the file and the line."""


@dataclass(frozen=True)
class Row:
    line: int
    prompt: str
    completion: str


def read_rows(path: str | Path, limit: int | None = None) -> list[Row]:
    """The prompt/completion rows of a JSONL file (the first `limit` of them); blank lines are skipped,
    anything else odd is an error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path}: no such file")
    rows: list[Row] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            rows.append(_parse_line(path, number, text))
            if len(rows) == limit:
                break
    if not rows:
        raise DatasetError(f"dataset {path.name}: no rows; each line should be a JSON object with prompt, completion")
    return rows


def _parse_line(path: Path, number: int, text: str) -> Row:
    where = f"dataset {path.name} line {number}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise DatasetError(f"{where}: expected a JSON object with prompt and completion, got {kind}")
    missing = [key for key in ("prompt", "completion") if key not in value]
    if missing:
        raise DatasetError(f"{where}: missing {' and '.join(missing)}")
    for key in ("prompt", "completion"):
        if not isinstance(value[key], str):
            raise DatasetError(f"{where}: {key} must be a string, got {type(value[key]).__name__}")
    if not value["completion"]:
        raise DatasetError(f"{where}: completion is empty, so there is nothing to learn from this row")
    return Row(line=number, prompt=value["prompt"], completion=value["completion"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The ids the model sees before the completion: bos (when the tokenizer has one) + prompt."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def encode_row(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_seq_length: int
) -> dict[str, list[int]]:
    """input_ids and labels for one row; labels are IGNORE_INDEX on bos and prompt tokens."""
    if tokenizer.eos_token_id is None:
        raise DatasetError("the tokenizer has no eos token, so the model could never learn where to stop")
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    input_ids = (prompt_ids + completion_ids)[:max_seq_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_seq_length]
    return {"input_ids": input_ids, "labels": labels}


class TokenizedDataset(Dataset[dict[str, list[int]]]):
    """Rows tokenized once up front: the datasets here are small next to the cost of a training step."""

    def __init__(self, examples: list[dict[str, list[int]]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def load_dataset(path: str | Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> TokenizedDataset:
    """Read, check and tokenize a JSONL dataset. Rows whose prompt fills max_seq_length are dropped."""
    examples: list[dict[str, list[int]]] = []
    dropped: list[int] = []
    for row in read_rows(path):
        example = encode_row(tokenizer, row.prompt, row.completion, max_seq_length)
        if all(label == IGNORE_INDEX for label in example["labels"]):
            dropped.append(row.line)
            continue
        examples.append(example)
    name = Path(path).name
    if dropped:
        log.warning(
            "dataset %s: %d rows have prompts of %d tokens or more and no room left for the completion "
            "(lines %s); they are skipped. Raise max_seq_length to keep them.",
            name,
            len(dropped),
            max_seq_length,
            ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else ""),
        )
    if not examples:
        raise DatasetError(
            f"dataset {name}: every prompt is at least max_seq_length={max_seq_length} tokens long, "
            "so no completion token is left to learn; raise max_seq_length"
        )
    return TokenizedDataset(examples)


@dataclass
class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with IGNORE_INDEX, attention_mask 1/0."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[i, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[i, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[i, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
