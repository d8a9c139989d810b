"""Held-out prompts scored by a GRPO run's rewards after training: the starting policy (the base, or the starting
run's adapter) beside the trained adapter, each answering greedily and sampling once at the run's temperature.

The rows are the task evaluation's (the first task_eval_rows held-out rows; messages rows too, their prompt being
the turns before the last assistant one), each prompt encoded as GRPOTrainer encodes it, answers up to
max_completion_length tokens as in training. The greedy answers of the task evaluation are taken as they are where
they are the same answers (prompt/completion rows, eval_max_new_tokens = max_completion_length). The sampled pass
is seeded with the run's seed, the same seed for both sides, and samples as training does (no top-k, no top-p).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from app.contracts.evaluation import RewardScore, RewardScores
from app.objectives.rewards import Reward
from app.schemas import RunSpec
from worker.data.files import Row
from worker.engine.evaluate import TaskAnswers
from worker.engine.objectives.base import starting_point
from worker.engine.objectives.grpo import grpo_record, prompt_ids
from worker.engine.rewards import RewardWarnings, score, weighted
from worker.serving.decoding import generate_completions

log = logging.getLogger(__name__)

BATCH = 16  # prompts per generate() call


def score_rewards(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    rows: Sequence[Row],
    greedy: TaskAnswers | None = None,
) -> RewardScores | str:
    """Both sides' mean rewards on the held-out prompts; or why there are none."""
    if not spec.task_eval_rows:
        return "task_eval_rows is 0: the reward evaluation answers the first task_eval_rows eval rows"
    if not rows:
        return "no eval data: set eval_split or eval_dataset to score the rewards on held-out prompts"
    records = [grpo_record(row) for row in rows if row.shape in ("prompt_completion", "messages")]
    records = records[: spec.task_eval_rows]
    if not records:
        return "the reward evaluation needs prompt/completion or messages rows; the eval data has none"
    prompts = [prompt_ids(tokenizer, record["prompt"]) for record in records]
    references = [str(record["reference"]) for record in records]
    same = (
        greedy is not None
        and greedy.max_new_tokens == spec.max_completion_length
        and greedy.prompts == [record["prompt"] for record in records]
    )
    was_training = model.training
    model.eval()
    try:
        adapter = _side(model, tokenizer, spec, prompts, references, greedy.adapter if same and greedy else None)
        with starting_point(model, spec):
            base = _side(model, tokenizer, spec, prompts, references, greedy.base if same and greedy else None)
    finally:
        model.train(was_training)
    return RewardScores(base=base, adapter=adapter)


def _side(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    prompts: list[list[int]],
    references: list[str],
    greedy: list[str] | None,
) -> RewardScore:
    if greedy is None:
        greedy = generate_completions(model, tokenizer, prompts, max_new_tokens=spec.max_completion_length)
    sampled = sample_completions(model, tokenizer, prompts, spec)
    rewards, warnings, longest = list(spec.rewards), RewardWarnings(), spec.max_completion_length
    greedy_scores = [
        reward_scores(rewards, tokenizer, a, r, longest, warnings) for a, r in zip(greedy, references, strict=True)
    ]
    sampled_scores = [
        reward_scores(rewards, tokenizer, a, r, longest, warnings) for a, r in zip(sampled, references, strict=True)
    ]
    return RewardScore(
        rows=len(prompts),
        greedy=_mean([weighted(rewards, scores) for scores in greedy_scores]),
        sampled=_mean([weighted(rewards, scores) for scores in sampled_scores]),
        functions={r.function: _mean([scores[r.function] for scores in greedy_scores]) for r in rewards},
    )


def reward_scores(
    rewards: list[Reward],
    tokenizer: PreTrainedTokenizerBase,
    answer: str,
    reference: str,
    longest: int,
    warnings: RewardWarnings | None = None,
) -> dict[str, float]:
    """Each reward's score of one answer. Its length in tokens is counted as training counts a completion's: its
    tokens (the answer encoded again) and the end-of-sequence token that ended it, unless it ran to `longest`."""
    tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    tokens += tokens < longest
    return {reward.function: score(reward, answer, reference, tokens, warnings=warnings) for reward in rewards}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def sample_completions(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]], spec: RunSpec
) -> list[str]:
    """One completion per prompt sampled at the run's temperature as GRPOTrainer samples (left-padded batches),
    seeded with the run's seed; the random state is left as it was."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    devices = [model.device] if model.device.type == "cuda" else []
    answers: list[str] = []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(spec.seed)
        for start in range(0, len(prompts), BATCH):
            batch = prompts[start : start + BATCH]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=model.device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=model.device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=spec.max_completion_length,
                do_sample=True,
                temperature=spec.temperature,
                top_k=0,
                top_p=1.0,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            answers += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return answers
