"""After training: did the adapter learn the task, and did the model keep what it could do before?

Base and adapter answer the same prompts greedily, side by side: held-out prompt/completion rows, scored
by exact match and, where the answer is a JSON object, by the share of fields right; then the run's
regression prompts, general questions whose answers a user reads for damage. The same scoring serves the
accuracy benchmark, so the two agree.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from app.schemas import RunSpec
from worker.data import Row, encode_prompt

log = logging.getLogger(__name__)

EXAMPLES = 5  # rows shown with both answers on the run page


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool) -> list[int]:
    """A free-form prompt as ids: through the tokenizer's chat template when asked and the model has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    return encode_prompt(tokenizer, prompt)


def generate_completions(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of each prompt (given as ids), cut at the end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        # Left padding: generation continues from the right edge of every row.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=model.device)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        answers.extend(tokenizer.batch_decode(output[:, width:], skip_special_tokens=True))
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
    prompts = [encode_prompt(tokenizer, row["prompt"]) for row in rows]
    predictions = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return score(predictions, [row["completion"] for row in rows]) | {"examples": predictions[:3]}


Progress = Callable[[int, int], None]
CHUNK = 16  # rows both sides answer between two progress reports (one generation batch)


def _both(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    spec: RunSpec,
    report: Callable[[int], None],
) -> tuple[list[str], list[str]]:
    """The base's answers and the adapter's (the same model with its adapter switched off), a chunk of
    rows at a time; `report` hears how many rows both have answered."""
    base: list[str] = []
    adapter: list[str] = []
    for start in range(0, len(prompts), CHUNK):
        chunk = prompts[start : start + CHUNK]
        adapter += generate_completions(model, tokenizer, chunk, max_new_tokens=spec.eval_max_new_tokens)
        with model.disable_adapter():
            base += generate_completions(model, tokenizer, chunk, max_new_tokens=spec.eval_max_new_tokens)
        report(len(chunk))
    return base, adapter


def evaluate_run(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    rows: Sequence[Row],
    *,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Task metrics on the held-out prompt/completion rows and the regression prompts' answers, base beside
    adapter. What is skipped says why, so the run page can tell the user what to set. `on_progress` hears
    (rows answered by both, rows in all) before the first row and after each chunk."""
    started = time.perf_counter()
    result: dict[str, Any] = {}
    task_rows = [row for row in rows if row.shape == "prompt_completion"][: spec.task_eval_rows]
    total = (len(task_rows) if spec.task_eval_rows else 0) + len(spec.regression_prompts)
    done = 0

    def report(answered: int) -> None:
        nonlocal done
        done += answered
        if on_progress is not None:
            on_progress(done, total)

    report(0)
    if not spec.task_eval_rows:
        result["task_skipped"] = "task_eval_rows is 0"
    elif not rows:
        result["task_skipped"] = "no eval data: set eval_split or eval_dataset to score the task"
    elif not task_rows:
        result["task_skipped"] = "task metrics need prompt/completion rows; the eval data has none"
    else:
        prompts = [encode_prompt(tokenizer, row.prompt) for row in task_rows]
        base, adapter = _both(model, tokenizer, prompts, spec, report)
        references = [row.completion for row in task_rows]
        result["task"] = {"base": score(base, references), "adapter": score(adapter, references)}
        result["examples"] = [
            {"prompt": row.prompt, "expected": row.completion, "base": b, "adapter": a}
            for row, b, a in list(zip(task_rows, base, adapter, strict=True))[:EXAMPLES]
        ]
    if spec.regression_prompts:
        prompts = [chat_prompt(tokenizer, prompt, chat=True) for prompt in spec.regression_prompts]
        base, adapter = _both(model, tokenizer, prompts, spec, report)
        result["regression"] = [
            {"prompt": prompt, "base": b, "adapter": a}
            for prompt, b, a in zip(spec.regression_prompts, base, adapter, strict=True)
        ]
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result
