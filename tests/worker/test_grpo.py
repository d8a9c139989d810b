"""GRPO runs of the tiny model through the real engine, in-process with a real Redis: the reward metrics, KL and
sampled completions a user watches, the reward evaluation after training, and a run continued from an SFT adapter
starting where that adapter stands (its reference too)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.models import Run, RunStatus
from app.objectives.rewards import Reward
from app.rundir import RunDir
from app.schemas import RunSpec
from tests.conftest import QUICK_RUN
from tests.worker.conftest import module_env, read_events, run_spec, train_points, train_run
from tests.worker.test_estimate import _memory
from worker.engine.objectives.grpo_eval import reward_scores
from worker.engine.rewards import weighted

pytestmark = pytest.mark.slow

EVAL = SAMPLE_DATASET_DIR / "eval.jsonl"
GRPO = QUICK_RUN | {
    "objective": "grpo",
    "method": "lora",
    "logging_steps": 1,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "learning_rate": 5e-4,
}
# Answers of 4 to 12 tokens score 1 (the base writes address fields line by line, 10 to 20 tokens): a reward that
# moves in a few steps; json_valid stays 0 on the base, a function that a group cannot tell apart.
SHORT = [{"function": "json_valid"}, {"function": "length", "min_tokens": 4, "max_tokens": 12}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    """loradeck_env for the whole module, so the trained runs are shared by its tests; the data dir's root."""
    with module_env(tmp_path_factory, redis_url, "grpo") as root:
        yield root


@pytest.fixture(scope="module")
def grpo_run(env: Path) -> Run:
    """A fresh adapter, KL to the base (beta > 0), three steps; evaluated on four held-out rows."""
    spec = GRPO | {"max_steps": 3, "max_completion_length": 20, "beta": 0.04, "rewards": SHORT}
    run = train_run(run_spec(spec, eval_dataset=str(EVAL), task_eval_rows=4, eval_max_new_tokens=20))
    assert run.status == RunStatus.succeeded, run.error
    return run


def test_a_grpo_run_logs_each_reward_its_lengths_and_kl_from_zero(grpo_run: Run) -> None:
    points = train_points(grpo_run.id)
    assert [p.step for p in points] == [1, 2, 3]
    first, *_, last = points
    assert {"reward", "reward_std", "rewards/json_valid/mean", "rewards/length/mean", "entropy"} <= set(first.values)
    assert {"completions/mean_length", "completions/max_length", "completions/clipped_ratio"} <= set(first.values)
    assert 0 < first.values["completions/mean_length"] <= first.values["completions/max_length"] <= 20
    assert first.values["rewards/json_valid/mean"] == 0.0  # the base writes no JSON
    # The logged reward is the weighted sum of the functions' means (weights 1).
    assert first.values["reward"] == pytest.approx(
        first.values["rewards/json_valid/mean"] + first.values["rewards/length/mean"]
    )
    # The policy starts as the reference (the base: a fresh adapter changes nothing), then moves away from it.
    assert first.values["kl"] == 0.0 and last.values["kl"] > 0.0
    # Tokens: the prompts and completions trained on, counted by TRL; the throughput between two logs.
    assert 0 < first.tokens_seen < last.tokens_seen  # type: ignore[operator]
    assert all(p.tokens_per_sec and p.tokens_per_sec > 0 for p in points)


def test_sampled_completions_reach_the_run_page_and_its_file(grpo_run: Run) -> None:
    events = [data for name, data in read_events(grpo_run.id) if name == "samples"]
    lines = RunDir.of(grpo_run.id, get_settings()).samples_file.read_text(encoding="utf-8").splitlines()
    # At the first log, then five steps apart: in three steps, once.
    assert [json.loads(line) for line in lines] == events and [e["step"] for e in events] == [1]
    (sample,) = events
    assert sample["prompt"].startswith("解析地址：") and json.loads(sample["reference"])["city"]
    assert 1 <= len(sample["completions"]) <= 4
    rewards = [Reward(**reward) for reward in SHORT]
    for completion in sample["completions"]:
        assert set(completion["rewards"]) == {"json_valid", "length"}
        assert completion["reward"] == pytest.approx(weighted(rewards, completion["rewards"]))
        assert completion["rewards"]["json_valid"] == 0.0 and completion["text"]


def test_the_reward_evaluation_scores_both_sides_greedy_and_sampled(grpo_run: Run) -> None:
    evaluation: dict[str, Any] = grpo_run.evaluation or {}
    scores = evaluation["reward"]
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    rewards = [Reward(**reward) for reward in SHORT]
    references = [json.loads(line)["completion"] for line in EVAL.read_text(encoding="utf-8").splitlines()[:4]]
    for side in ("base", "adapter"):
        assert scores[side]["rows"] == 4 and 0.0 <= scores[side]["sampled"] <= 2.0
        # The greedy answers are the task evaluation's (the examples show them all here), scored by the rewards.
        answers = [example[side] for example in evaluation["examples"]]
        each = [reward_scores(rewards, tokenizer, a, r, 20) for a, r in zip(answers, references, strict=True)]
        assert scores[side]["functions"] == pytest.approx(
            {name: sum(s[name] for s in each) / 4 for name in ("json_valid", "length")}
        )
        assert scores[side]["greedy"] == pytest.approx(sum(weighted(rewards, s) for s in each) / 4)
    assert evaluation["task"]["adapter"]["rows"] == 4  # the task figures as for SFT


# --- continued from an SFT run: the first step samples from the SFT adapter, against it as the reference

FIELDS = GRPO | {
    "method": "qlora",  # TRL rounds a 4-bit base's trained weights to bf16; ours start as the reference
    "max_steps": 1,
    "per_device_train_batch_size": 16,  # four prompts, four completions each
    "max_completion_length": 50,  # the sample's answers are 40 to 49 tokens
    "max_seq_length": 96,
    "temperature": 0.5,
    "beta": 0.04,
    "rewards": [{"function": "json_fields"}],
}


@pytest.fixture(scope="module")
def sft_run(env: Path) -> Run:
    """Trained enough to get about 70% of the fields right (greedy), the base none."""
    run = train_run(
        run_spec(QUICK_RUN, method="qlora", max_steps=20, learning_rate=5e-3, per_device_train_batch_size=4,
                 max_seq_length=96)
    )  # fmt: skip
    assert run.status == RunStatus.succeeded, run.error
    return run


def test_continuing_an_sft_run_samples_from_its_adapter_against_it(sft_run: Run) -> None:
    continued = train_run(
        run_spec(FIELDS, init_from_run=sft_run.id, eval_dataset=str(EVAL), task_eval_rows=8, eval_max_new_tokens=50)
    )
    fresh = train_run(run_spec(FIELDS))
    assert continued.status == fresh.status == RunStatus.succeeded, continued.error or fresh.error
    (first,) = train_points(continued.id)
    (from_base,) = train_points(fresh.id)
    # The evaluation's starting side is the SFT adapter, loaded on its own, sampled at the same temperature: the
    # first step's 16 completions score as it does (within sampling noise), where a fresh adapter scores ~0.
    starting = (continued.evaluation or {})["reward"]["base"]
    assert starting["sampled"] > 0.4 and from_base.values["rewards/json_fields/mean"] < 0.1
    assert first.values["rewards/json_fields/mean"] == pytest.approx(starting["sampled"], abs=0.2)
    # Its reference is the SFT adapter, not the base: no KL at the first step.
    assert first.values["kl"] == 0.0 and from_base.values["kl"] == 0.0
    assert sft_run.id in (continued.evaluation or {})["base"]["label"]


# --- refusals and the estimate: no training


def test_early_stopping_and_prompts_longer_than_max_seq_length_are_refused(env: Path) -> None:
    # GRPO has no eval loss: early stopping is refused with the spec, before anything is queued.
    with pytest.raises(ValidationError, match="early_stopping_patience: objective grpo has no eval loss to stop on"):
        RunSpec(**GRPO | {"early_stopping_patience": 2, "eval_dataset": str(EVAL), "eval_steps": 1, "save_steps": 1})
    # Every prompt of the sample is 21 to 34 tokens long.
    short = train_run(run_spec(GRPO, max_steps=1, max_seq_length=16))
    assert short.status == RunStatus.failed
    assert (short.error or "").startswith("max_seq_length: every prompt of train.jsonl is longer than 16 tokens")


def test_the_estimate_counts_the_completion_and_the_generation_batch() -> None:
    grpo = {"method": "lora", "objective": "grpo", "per_device_train_batch_size": 8, "num_generations": 8}
    grpo |= {"max_seq_length": 256, "max_completion_length": 512, "gradient_checkpointing": True}
    sft = {"method": "lora", "per_device_train_batch_size": 8, "max_seq_length": 768, "gradient_checkpointing": True}
    # The training step is an SFT step of prompt + completion...
    assert _memory(**grpo)["activations"] == _memory(**sft)["activations"]
    # ...unless the KV cache of a step's completions (16 batches of 8 generated at once) is larger.
    assert _memory(**grpo, gradient_accumulation_steps=16)["activations"] > _memory(**sft)["activations"]
