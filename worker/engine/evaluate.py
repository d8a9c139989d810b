"""After training: did the adapter learn the task, and did the model keep what it could do before?

Base and adapter answer the same prompts greedily, side by side: held-out prompt/completion rows, scored
by exact match and, where the answer is a JSON object, by the share of fields right; then the run's
regression prompts, general questions whose answers a user reads for damage. The same scoring serves the
accuracy benchmark, so the two agree.

The base is the one the run ships against (`shipped_model`): for QLoRA the full-precision base, as the
merged download has it, not the 4-bit copy training used. The answers are the model's own for every
method (worker.serving.decoding). The result is typed (app.contracts.evaluation) and stored on the run.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from sqlalchemy.orm import Session, sessionmaker
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from app import runs
from app.config import get_settings
from app.contracts.evaluation import (
    EvaluatedBase,
    Evaluation,
    Example,
    Progress,
    RegressionAnswer,
    TaskScore,
    TaskScores,
)
from app.contracts.events import EvaluatingEvent, EvaluationEvent
from app.objectives import REGISTRY
from app.schemas import RunSpec
from worker.data.encode import Row, encode_prompt, eval_rows
from worker.data.hub import model_source
from worker.engine.configs import compute_dtype, quantization_mode
from worker.engine.objectives.base import starting_point
from worker.runtime.publisher import EventPublisher
from worker.serving.decoding import chat_prompt, generate_completions

log = logging.getLogger(__name__)

EXAMPLES = 5  # rows shown with both answers on the run page


def shipped_model(model: PeftModel, spec: RunSpec, adapter_dir: Path) -> tuple[PeftModel, EvaluatedBase]:
    """The model whose answers the evaluation shows, and its base described for the run page.

    A run trained on a quantized copy of its base (QLoRA, 8-bit LoRA) ships as the full-precision base
    plus the adapter (the merge reloads the base in full precision), so that is what is evaluated: the
    base from its files in its own dtype (what the merged download holds by default) with the saved
    adapter on it. Where it does not fit in the GPU's memory beside the trained model, the trained model
    answers and the description says so. Any other run answers with the trained model itself."""
    trained = quantization_mode(spec)
    bits = {"4bit": "4-bit", "8bit": "8-bit"}.get(trained, trained)
    if trained == "none":
        dtype = str(model.get_base_model().dtype).removeprefix("torch.")
        return model, EvaluatedBase(label=f"base ({dtype})", dtype=dtype, quantization="none")
    try:
        base = AutoModelForCausalLM.from_pretrained(
            model_source(spec.base_model),
            dtype="auto",
            device_map={"": model.device},
            trust_remote_code=get_settings().allow_trust_remote_code,
            use_safetensors=True,
        )
        full = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
    except torch.OutOfMemoryError as exc:
        log.warning("evaluation: the full-precision base does not fit (%s); the %s base answers instead", exc, bits)
        gc.collect()
        torch.cuda.empty_cache()
        return model, EvaluatedBase(
            label=f"{bits} base, as trained",
            dtype=str(compute_dtype(spec)).removeprefix("torch."),
            quantization=trained,
            trained_quantization=trained,
            note=f"the full-precision base did not fit in memory beside the trained model, so these are the "
            f"{bits} base's answers and the adapter's on it; the merged download is the full-precision base "
            "plus the adapter and may answer differently",
        )
    full.config.use_cache = True
    dtype = str(base.dtype).removeprefix("torch.")
    return full, EvaluatedBase(
        label=f"full-precision base ({dtype})",
        dtype=dtype,
        quantization="none",
        trained_quantization=trained,
        note=f"trained on a {bits} copy of the base; base and adapter answer here on the full-precision "
        "base, as the merged download does",
    )


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def score(predictions: Sequence[str], references: Sequence[str]) -> TaskScore:
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
    return TaskScore(
        rows=len(references),
        exact_match=exact / len(references) if references else 0.0,
        field_accuracy=fields_right / fields_total if fields_total else None,
    )


@dataclass
class TaskAnswers:
    """The task rows' greedy answers, both sides', up to max_new_tokens tokens (GRPO's rewards score them too)."""

    prompts: list[str] = field(default_factory=list)
    base: list[str] = field(default_factory=list)
    adapter: list[str] = field(default_factory=list)
    max_new_tokens: int = 0


ProgressReport = Callable[[int, int], None]
CHUNK = 16  # rows both sides answer between two progress reports (one generation batch)


def _both(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    spec: RunSpec,
    report: Callable[[int], None],
) -> tuple[list[str], list[str]]:
    """The base's answers (the same model with its adapter switched off; for a continued run, the starting
    run's adapter) and the adapter's, a chunk of rows at a time; `report` hears how many rows both have answered."""
    base: list[str] = []
    adapter: list[str] = []
    for start in range(0, len(prompts), CHUNK):
        chunk = prompts[start : start + CHUNK]
        adapter += generate_completions(model, tokenizer, chunk, max_new_tokens=spec.eval_max_new_tokens)
        with starting_point(model, spec):
            base += generate_completions(model, tokenizer, chunk, max_new_tokens=spec.eval_max_new_tokens)
        report(len(chunk))
    return base, adapter


def answer_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows with a text prompt and an expected answer: prompt/completion rows, and of preference data the chosen
    answer of a pair (or an unpaired answer labelled good)."""
    expected = []
    for row in rows:
        if row.shape == "prompt_completion":
            expected.append(row)
        elif row.shape in ("preference", "unpaired") and not row.messages and (row.chosen or row.label):
            expected.append(Row(line=row.line, prompt=row.prompt, completion=row.chosen or row.completion))
    return expected


def evaluate_run(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    rows: Sequence[Row],
    *,
    on_progress: ProgressReport | None = None,
    keep: TaskAnswers | None = None,
) -> Evaluation:
    """Task metrics on the held-out prompt/completion rows and the regression prompts' answers, base beside
    adapter. What is skipped says why, so the run page can tell the user what to set. `on_progress` hears
    (rows answered by both, rows in all) before the first row and after each chunk. `keep` receives the task
    rows' answers, for GRPO's rewards to score them too."""
    started = time.perf_counter()
    result = Evaluation()
    task_rows = answer_rows(rows)[: spec.task_eval_rows]
    total = (len(task_rows) if spec.task_eval_rows else 0) + len(spec.regression_prompts)
    done = 0

    def report(answered: int) -> None:
        nonlocal done
        done += answered
        if on_progress is not None:
            on_progress(done, total)

    report(0)
    if not spec.task_eval_rows:
        result.task_skipped = "task_eval_rows is 0"
    elif not rows:
        result.task_skipped = "no eval data: set eval_split or eval_dataset to score the task"
    elif not task_rows:
        result.task_skipped = (
            "task metrics need prompt/completion rows (or pairs whose prompt is text); the eval data has none"
        )
    else:
        prompts = [encode_prompt(tokenizer, row.prompt) for row in task_rows]
        base, adapter = _both(model, tokenizer, prompts, spec, report)
        references = [row.completion for row in task_rows]
        if keep is not None:
            keep.prompts, keep.base, keep.adapter = [row.prompt for row in task_rows], base, adapter
            keep.max_new_tokens = spec.eval_max_new_tokens
        result.task = TaskScores(base=score(base, references), adapter=score(adapter, references))
        result.examples = [
            Example(prompt=row.prompt, expected=row.completion, base=b, adapter=a)
            for row, b, a in list(zip(task_rows, base, adapter, strict=True))[:EXAMPLES]
        ]
    if spec.regression_prompts:
        prompts = [chat_prompt(tokenizer, prompt, chat=True) for prompt in spec.regression_prompts]
        base, adapter = _both(model, tokenizer, prompts, spec, report)
        result.regression = [
            RegressionAnswer(prompt=prompt, base=b, adapter=a)
            for prompt, b, a in zip(spec.regression_prompts, base, adapter, strict=True)
        ]
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def score_rewards(
    evaluation: Evaluation,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    rows: Sequence[Row],
    answers: TaskAnswers,
) -> None:
    """GRPO: the held-out prompts scored by the run's rewards (worker.engine.objectives.grpo_eval)."""
    from worker.engine.objectives.grpo_eval import score_rewards as scored  # TRL and the rewards: SFT runs skip them

    scores = scored(model, tokenizer, spec, rows, answers)
    if isinstance(scores, str):
        evaluation.reward_skipped = scores
        return
    evaluation.reward = scores
    log.info(
        "rewards on %d eval prompts: greedy %.3f -> %.3f, sampled %.3f -> %.3f (starting policy -> adapter)",
        scores.adapter.rows,
        scores.base.greedy,
        scores.adapter.greedy,
        scores.base.sampled or 0.0,
        scores.adapter.sampled or 0.0,
    )


def evaluate_after_training(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    run_id: str,
    adapter_dir: Path,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
) -> None:
    """Base beside adapter on the eval rows and the regression prompts, on the base the run ships against
    (`shipped_model`: for QLoRA the full-precision one); stored on the run and announced. A failure here costs
    the run nothing: the adapter is saved; the evaluation says what went wrong instead."""
    kind = REGISTRY[spec.objective].evaluation
    preference = kind == "preference"
    # GRPO's rewards score the task rows (task_eval_rows of them): nothing to do when there are none.
    if not spec.task_eval_rows and not spec.regression_prompts and not preference:
        return
    model.config.use_cache = True  # off for training; generation wants it

    def progress(done: int, total: int) -> None:
        # The run page and the runs list say "evaluating done/total rows" while base and adapter answer.
        state = Evaluation(progress=Progress(done=done, total=total))
        with sessions() as session:
            runs.record_evaluation(session=session, run_id=run_id, evaluation=state.stored())
        publisher.publish(EvaluatingEvent(done=done, total=total))

    try:
        shipped, base = shipped_model(model, spec, adapter_dir)
        rows = eval_rows(spec)
        answers = TaskAnswers()
        evaluation = evaluate_run(shipped, tokenizer, spec, rows, on_progress=progress, keep=answers)
        evaluation.base = base
        if spec.init_from_run:
            evaluation.starting_run = spec.init_from_run
            base.label = f"{base.label} + run {spec.init_from_run}'s adapter"
        if preference:
            from worker.engine.objectives.preference_eval import score_pairs  # TRL's tokenization; SFT runs skip it

            scores = score_pairs(shipped, tokenizer, spec, rows)
            if isinstance(scores, str):
                evaluation.preference_skipped = scores
            else:
                evaluation.preference = scores
                log.info(
                    "preference: chosen over rejected on %d eval pairs, %.1f%% -> %.1f%% (mean margin %.2f -> %.2f)",
                    scores.adapter.rows,
                    100 * scores.base.accuracy,
                    100 * scores.adapter.accuracy,
                    scores.base.margin,
                    scores.adapter.margin,
                )
        if kind == "reward":
            score_rewards(evaluation, shipped, tokenizer, spec, rows, answers)
        del shipped
        gc.collect()
    except Exception as exc:
        log.warning("evaluation after training failed: %s", exc, exc_info=True)
        evaluation = Evaluation(error=f"{type(exc).__name__}: {exc}")
    if evaluation.task is not None:
        for side, task in (("base", evaluation.task.base), ("adapter", evaluation.task.adapter)):
            fields = task.field_accuracy
            log.info(
                "task metrics, %s: exact match %.1f%% of %d rows%s",
                side,
                100 * task.exact_match,
                task.rows,
                "" if fields is None else f", JSON fields right {100 * fields:.1f}%",
            )
    stored = evaluation.stored()
    with sessions() as session:
        runs.record_evaluation(session=session, run_id=run_id, evaluation=stored)
    publisher.publish(
        EvaluationEvent(**{key: stored[key] for key in ("base", "task", "task_skipped", "error") if key in stored})
    )
