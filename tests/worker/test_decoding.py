"""The evaluation's and the playground's answers are the model's own: for every method, token for token
what the plainest greedy loop (one sequence, no padding, no KV cache) gives on the same model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.schemas import RunSpec
from worker.data.encode import eval_rows
from worker.engine.configs import model_dtype, peft_config, quantization_config
from worker.engine.evaluate import evaluate_run, score
from worker.serving.decoding import chat_prompt, reference_greedy
from worker.serving.generate import Sampling, Side, decode_lockstep

METHODS = ["lora", "qlora", "ia3", "prompt_tuning"]
ROWS = 6  # of different lengths, so a batch is padded
NEW_TOKENS = 24
REGRESSION = ["List three fruits."]


def _spec(method: str) -> RunSpec:
    return RunSpec(
        base_model=str(TINY_MODEL_DIR),
        dataset=str(SAMPLE_DATASET_DIR / "train.jsonl"),
        eval_dataset=str(SAMPLE_DATASET_DIR / "eval.jsonl"),
        method=method,
        precision="fp32",  # fp32 everywhere: in half precision a cached and an uncached pass may round apart
        bnb_4bit_compute_dtype="float32",
        num_virtual_tokens=8,
        task_eval_rows=ROWS,
        eval_max_new_tokens=NEW_TOKENS,
        regression_prompts=REGRESSION,
    )


def _tokenizer() -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module", params=METHODS)
def adapted(request: pytest.FixtureRequest) -> tuple[RunSpec, PeftModel]:
    """The method's adapter on its base as training builds them (QLoRA: on the 4-bit base), moved away
    from its initial weights by a seeded random amount, so its answers differ from the base's."""
    spec = _spec(request.param)
    base = AutoModelForCausalLM.from_pretrained(
        TINY_MODEL_DIR, dtype=model_dtype(spec), quantization_config=quantization_config(spec)
    )
    torch.manual_seed(0)
    model: PeftModel = get_peft_model(base, peft_config(spec, model_type="llama"))  # type: ignore[assignment]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator).to(param.dtype)
                # LoRA's B starts at zero and (IA)³'s vectors at one; prompt tuning's virtual tokens are random.
                param.copy_(noise * 0.05) if "lora_" in name else param.mul_(1 + 0.3 * noise)
    return spec, model.eval()


def _references(model: Any, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]]) -> list[str]:
    return [reference_greedy(model, tokenizer, ids, max_new_tokens=NEW_TOKENS) for ids in prompts]


def test_the_evaluations_answers_are_the_reference_loops(adapted: tuple[RunSpec, PeftModel]) -> None:
    spec, model = adapted
    tokenizer = _tokenizer()
    rows = eval_rows(spec)[:ROWS]
    prompts = [chat_prompt(tokenizer, row.prompt, chat=False) for row in rows]
    assert len({len(ids) for ids in prompts}) > 1  # the batch needs padding

    result = evaluate_run(model, tokenizer, spec, rows)

    adapter = _references(model, tokenizer, prompts)
    with model.disable_adapter():
        base = _references(model, tokenizer, prompts)
    assert adapter != base  # the adapter changes the answers, so the two columns are told apart
    examples = result.examples
    assert [example.adapter for example in examples] == adapter[: len(examples)]
    assert [example.base for example in examples] == base[: len(examples)]
    references = [row.completion for row in rows]
    assert result.task is not None
    assert result.task.adapter == score(adapter, references)
    assert result.task.base == score(base, references)
    regression = [chat_prompt(tokenizer, prompt, chat=True) for prompt in REGRESSION]
    assert [row.adapter for row in result.regression] == _references(model, tokenizer, regression)
    with model.disable_adapter():
        assert [row.base for row in result.regression] == _references(model, tokenizer, regression)


def test_the_playgrounds_answers_are_the_reference_loops(adapted: tuple[RunSpec, PeftModel]) -> None:
    spec, model = adapted
    tokenizer = _tokenizer()
    prompts = [chat_prompt(tokenizer, row.prompt, chat=False) for row in eval_rows(spec)[:ROWS]]
    references = _references(model, tokenizer, prompts)
    with model.disable_adapter():
        bases = _references(model, tokenizer, prompts)
    # A prompt the adapter answers otherwise than the base, so the two panes are told apart.
    ids, base, adapter = next((i, b, a) for i, b, a in zip(prompts, bases, references, strict=True) if b != a)
    sides = [Side("base", model, None), Side("adapter", model, "default")]

    texts = decode_lockstep(sides, tokenizer, torch.tensor([ids]), Sampling(max_new_tokens=NEW_TOKENS), lambda *_: None)

    assert texts == [base, adapter]
