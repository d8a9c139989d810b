"""After training, base and adapter answer the eval rows and the regression prompts side by side."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from tests.worker.conftest import run_spec, train_run
from worker.engine.configs import quantization_config
from worker.serving.decoding import chat_prompt, generate_completions, reference_greedy

pytestmark = pytest.mark.slow

# This module's runs, unless a test says otherwise (on top of tests/worker/conftest.py's `run_spec`): scored on
# the sample's eval rows.
EVALUATED = {
    "eval_dataset": str(SAMPLE_DATASET_DIR / "eval.jsonl"),
    "learning_rate": 2e-3,
    "per_device_train_batch_size": 4,
    "max_seq_length": 96,
    "save_steps": 0,
    "eval_steps": 0,  # the eval loss once, at the end: these tests are about base and adapter answering
    "eval_max_new_tokens": 24,
}


def test_a_trained_adapter_outscores_its_base_and_both_answer_the_regression_prompts(
    loradeck_env: dict[str, str],
) -> None:
    prompts = ["List three fruits.", "請用一句話介紹臺北。"]
    spec = run_spec(
        EVALUATED,
        method="lora",
        max_steps=80,
        per_device_train_batch_size=8,
        task_eval_rows=32,
        eval_max_new_tokens=48,
        regression_prompts=prompts,
    )
    run = train_run(spec)
    assert run.status == "succeeded", run.error
    evaluation: dict[str, Any] = run.evaluation
    base, adapter = evaluation["task"]["base"], evaluation["task"]["adapter"]
    assert base["rows"] == adapter["rows"] == 32
    # The base has never seen the eight-key answer; the adapter writes it, with the empty fields right.
    assert base["field_accuracy"] < 0.05
    assert adapter["field_accuracy"] > base["field_accuracy"] + 0.3
    assert adapter["exact_match"] >= base["exact_match"]
    assert len(evaluation["examples"]) == 5
    assert evaluation["examples"][0]["expected"].startswith('{"city":')

    # The "base" column is the base itself: the same greedy text as the bare model gives.
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    bare = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    ids = [chat_prompt(tokenizer, prompt, chat=True) for prompt in prompts]
    expected = generate_completions(bare, tokenizer, ids, max_new_tokens=48)
    assert [row["prompt"] for row in evaluation["regression"]] == prompts
    assert [row["base"] for row in evaluation["regression"]] == expected
    assert all(row["adapter"] for row in evaluation["regression"])


def test_a_qlora_evaluation_shows_the_full_precision_base_it_ships_against(loradeck_env: dict[str, str]) -> None:
    """QLoRA trains on a 4-bit copy of the base, but the merged download is the full-precision base plus
    the adapter: the evaluation's base column is that base, named, and its adapter column is the adapter
    on it."""
    prompts = ["List three fruits."]
    spec = run_spec(EVALUATED, method="qlora", max_steps=4, task_eval_rows=6, regression_prompts=prompts)
    run = train_run(spec)
    assert run.status == "succeeded", run.error
    evaluation: dict[str, Any] = run.evaluation
    assert "error" not in evaluation, evaluation.get("error")
    assert evaluation["base"]["quantization"] == "none" and evaluation["base"]["trained_quantization"] == "4bit"
    assert evaluation["base"]["dtype"] == "float32"  # the tiny base's own, as the merge writes it by default
    assert "full-precision" in evaluation["base"]["label"]

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    full = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    rows = [example["prompt"] for example in evaluation["examples"]]
    ids = [chat_prompt(tokenizer, prompt, chat=False) for prompt in rows]
    regression_ids = [chat_prompt(tokenizer, prompt, chat=True) for prompt in prompts]
    answers = [reference_greedy(full, tokenizer, prompt, max_new_tokens=24) for prompt in ids]
    four_bit = AutoModelForCausalLM.from_pretrained(
        TINY_MODEL_DIR, quantization_config=quantization_config(spec), dtype=torch.float32
    )
    every = ids + regression_ids
    full_answers = [reference_greedy(full, tokenizer, prompt, max_new_tokens=24) for prompt in every]
    assert full_answers != [reference_greedy(four_bit, tokenizer, prompt, max_new_tokens=24) for prompt in every], (
        "the 4-bit base answers these prompts as the full-precision one does, so this test cannot tell them apart"
    )
    assert [example["base"] for example in evaluation["examples"]] == answers
    assert [row["base"] for row in evaluation["regression"]] == [
        reference_greedy(full, tokenizer, prompt, max_new_tokens=24) for prompt in regression_ids
    ]
    shipped = PeftModel.from_pretrained(full, str(get_settings().runs_dir / run.id / "adapter")).eval()
    assert [example["adapter"] for example in evaluation["examples"]] == [
        reference_greedy(shipped, tokenizer, prompt, max_new_tokens=24) for prompt in ids
    ]


def test_a_prompt_tuning_runs_evaluation_shows_the_answers_its_adapter_gives(loradeck_env: dict[str, str]) -> None:
    """The recorded answers of a trained prompt-tuning adapter are what the saved adapter writes."""
    spec = run_spec(
        EVALUATED, method="prompt_tuning", num_virtual_tokens=8, max_steps=4, learning_rate=3e-2, task_eval_rows=5
    )
    run = train_run(spec)
    assert run.status == "succeeded", run.error
    evaluation: dict[str, Any] = run.evaluation
    assert evaluation["base"] == {"label": "base (float32)", "dtype": "float32", "quantization": "none"}

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(get_settings().runs_dir / run.id / "adapter")).eval()
    ids = [chat_prompt(tokenizer, example["prompt"], chat=False) for example in evaluation["examples"]]
    assert len(ids) == 5
    answers = [reference_greedy(tuned, tokenizer, prompt, max_new_tokens=24) for prompt in ids]
    assert [example["adapter"] for example in evaluation["examples"]] == answers
