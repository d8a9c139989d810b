"""Task metrics on prompt/completion data: greedy answers scored by exact match and, for JSON, by field.

The same scoring serves the run's final evaluation and the accuracy benchmark, so the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


def generate_completions(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of each prompt, cut at the end-of-sequence token."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    answers: list[str] = []
    try:
        model.eval()
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
    return answers


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Exact-match accuracy and, where the references are JSON objects, the share of fields right."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    fields_right = fields_total = 0
    for prediction, reference in zip(predictions, references, strict=True):
        expected = _json_object(reference)
        if expected is None:
            continue
        got = _json_object(prediction)
        fields_total += len(expected)
        if got is not None:  # an answer that is not a JSON object gets no field right, not even a null one
            fields_right += sum(key in got and got[key] == value for key, value in expected.items())
    return {
        "rows": len(references),
        "exact_match": exact / len(references) if references else 0.0,
        "field_accuracy": fields_right / fields_total if fields_total else None,
    }


def evaluate_rows(
    model: Any, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, str]], *, max_new_tokens: int = 64
) -> dict[str, Any]:
    """Score a model on prompt/completion rows."""
    predictions = generate_completions(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens=max_new_tokens)
    return score(predictions, [row["completion"] for row in rows]) | {"examples": predictions[:3]}
