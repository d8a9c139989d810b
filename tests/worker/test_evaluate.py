"""Scoring: exact match and JSON field accuracy, and greedy generation that matches generate() row by row."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from worker.data.encode import encode_prompt
from worker.engine.evaluate import score
from worker.serving.decoding import generate_completions


def test_score_counts_exact_matches_and_json_fields() -> None:
    references = ['{"a":1,"b":2}', '{"a":3,"b":4}', '{"a":null,"b":1}', '{"a":null}', "plain"]
    predictions = ['{"a":1,"b":2}', '{"a":3,"b":5}', '{"b":1}', "not json", "plain "]
    result = score(predictions, references)
    assert result.exact_match == 2 / 5
    # A missing key is not a right null, and an answer that is not JSON gets nothing right.
    assert result.field_accuracy == 4 / 7


def test_batched_greedy_generation_equals_one_prompt_at_a_time() -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    rows = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "eval.jsonl").open()][:4]
    prompts = [row["prompt"] for row in rows]
    ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    batched = generate_completions(model, tokenizer, ids, max_new_tokens=24, batch_size=4)
    single = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        single.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    assert batched == single
