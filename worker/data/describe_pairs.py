"""A preference file described for the web (worker.data.describe hands these shapes here): the prompt shown once
and each answer after it, the tokens the loss falls on marked, and the token lengths of each part.

Each answer is encoded as the supervised encoder would encode the prompt with that answer (worker.data.encode):
for a pair the loss falls on the chosen and the rejected answer, never on the prompt, and the chat template
renders a conversational prompt with the generation prompt before each answer, as a preference trainer does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from app.contracts.datasets import DatasetDescription
from worker.data.chat import IGNORE_INDEX, chat_template_name
from worker.data.encode import encode_all, learns_something, truncate
from worker.data.files import DatasetFile, Row
from worker.data.token_counts import Example, histogram, segments, token_stats, trained_count

ANSWERS = {"preference": ("chosen", "rejected"), "unpaired": ("completion",)}
SHOWN_EXAMPLES = 3


def as_supervised(row: Row, answer: str) -> Row:
    """The row with one of its answers, as the supervised encoder reads it: the prompt as context, the answer
    as what is learned."""
    if row.messages:
        return Row(line=row.line, shape="messages", messages=[*row.messages, {"role": "assistant", "content": answer}])
    return Row(line=row.line, prompt=row.prompt, completion=answer)


def prompt_length(example: Example) -> int:
    """How many ids come before the answer: the first trained one starts it."""
    return next((i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX), len(example["labels"]))


def _slice(example: Example, start: int, stop: int | None = None) -> Example:
    return {key: ids[start:stop] for key, ids in example.items()}


def describe_pairs(
    found: DatasetFile, path: Path, tokenizer: PreTrainedTokenizerBase, *, max_seq_length: int, chat_template: str
) -> DatasetDescription:
    """As describe_dataset, for prompt/chosen/rejected and prompt/completion/label files. A row is as long as
    its prompt and its longer answer; a row is dropped when max_seq_length leaves an answer nothing to learn."""
    assert found.shape in ANSWERS, found.shape
    names = ANSWERS[found.shape]
    views = [as_supervised(row, getattr(row, name)) for row in found.rows for name in names]
    encoded = encode_all(views, tokenizer, chat_template, False, path)
    per_row = [encoded[i : i + len(names)] for i in range(0, len(encoded), len(names))]
    starts = [[prompt_length(example) for example in examples] for examples in per_row]
    lengths = sorted(max(len(example["input_ids"]) for example in examples) for examples in per_row)
    parts = {"prompt": sorted(row_starts[0] for row_starts in starts)}
    for j, name in enumerate(names):
        parts[name] = sorted(len(ex[j]["input_ids"]) - s[j] for ex, s in zip(per_row, starts, strict=True))
    cut = [[truncate(example, max_seq_length) for example in examples] for examples in per_row]
    kept = [i for i, examples in enumerate(cut) if all(learns_something(example) for example in examples)]
    truncated = sum(length > max_seq_length for length in lengths)
    conversational = bool(found.rows[0].messages)
    return DatasetDescription.model_validate(
        {
            "file": found.name,
            "format": found.format,
            "rows": len(found.rows),
            "shape": found.shape,
            "fields": found.fields,
            "chat_template": chat_template_name(tokenizer, chat_template) if conversational else None,
            "max_seq_length": max_seq_length,
            "tokens": token_stats(lengths),
            "histogram": histogram(lengths),
            "parts": {name: {"tokens": token_stats(ls), "histogram": histogram(ls)} for name, ls in parts.items()},
            "labels": _labels(found.rows) if found.shape == "unpaired" else None,
            "truncated_rows": truncated,
            "truncated_share": truncated / len(lengths),
            "dropped_rows": len(found.rows) - len(kept),
            "trained_tokens": sum(trained_count(example) for i in kept for example in cut[i]),
            "examples": [_example(found.rows[i], names, cut[i], starts[i], tokenizer) for i in kept[:SHOWN_EXAMPLES]],
        }
    )


def _example(
    row: Row, names: tuple[str, ...], examples: list[Example], starts: list[int], tokenizer: PreTrainedTokenizerBase
) -> dict[str, Any]:
    answers = [
        {
            "name": name,
            "label": row.label,
            "tokens": len(example["input_ids"]) - start,
            "segments": segments(tokenizer, _slice(example, start)),
        }
        for name, example, start in zip(names, examples, starts, strict=True)
    ]
    return {
        "line": row.line,
        "tokens": max(len(example["input_ids"]) for example in examples),
        "segments": segments(tokenizer, _slice(examples[0], 0, starts[0])),
        "answers": answers,
    }


def _labels(rows: list[Row]) -> dict[str, int]:
    good = sum(bool(row.label) for row in rows)
    return {"good": good, "bad": len(rows) - good}
