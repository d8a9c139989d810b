"""After training: did the adapter learn the task, and did the model keep what it could do before?

Base and adapter answer the same prompts greedily, side by side: held-out prompt/completion rows, scored
by exact match and, where the answer is a JSON object, by the share of fields right; then the run's
regression prompts, general questions whose answers a user reads for damage. The same scoring serves the
accuracy benchmark, so the two agree.

The base is the one the run ships against (`shipped_model`): for QLoRA the full-precision base, as the
merged download has it, not the 4-bit copy training used. The answers are the model's own for every
method: `reference_greedy` (no cache, no padding) is the yardstick the fast paths are tested against.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PeftType
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from app.config import get_settings
from app.schemas import RunSpec
from worker.data.encode import Row, encode_prompt
from worker.engine.configs import compute_dtype, quantization_mode

log = logging.getLogger(__name__)

EXAMPLES = 5  # rows shown with both answers on the run page


def shipped_model(model: PeftModel, spec: RunSpec, adapter_dir: Path) -> tuple[PeftModel, dict[str, Any]]:
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
        return model, {"label": f"base ({dtype})", "dtype": dtype, "quantization": "none"}
    try:
        base = AutoModelForCausalLM.from_pretrained(
            spec.base_model,
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
        return model, {
            "label": f"{bits} base, as trained",
            "dtype": str(compute_dtype(spec)).removeprefix("torch."),
            "quantization": trained,
            "trained_quantization": trained,
            "note": f"the full-precision base did not fit in memory beside the trained model, so these are the "
            f"{bits} base's answers and the adapter's on it; the merged download is the full-precision base "
            "plus the adapter and may answer differently",
        }
    full.config.use_cache = True
    dtype = str(base.dtype).removeprefix("torch.")
    return full, {
        "label": f"full-precision base ({dtype})",
        "dtype": dtype,
        "quantization": "none",
        "trained_quantization": trained,
        "note": f"trained on a {bits} copy of the base; base and adapter answer here on the full-precision "
        "base, as the merged download does",
    }


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool) -> list[int]:
    """A free-form prompt as ids: through the tokenizer's chat template when asked and the model has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    return encode_prompt(tokenizer, prompt)


def eos_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end an answer (a tokenizer may name several)."""
    eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()


@torch.no_grad()
def reference_greedy(model: Any, tokenizer: PreTrainedTokenizerBase, ids: list[int], *, max_new_tokens: int) -> str:
    """The plainest greedy decoding there is, kept as the yardstick for the fast paths: one sequence, no
    padding, no KV cache, the whole sequence through the model at every step, the argmax appended. Slow
    (quadratic); the tests and the accuracy benchmark check the evaluation's and the playground's answers
    against it."""
    model.eval()
    stop = eos_ids(tokenizer)
    sequence, answer = list(ids), []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([sequence], device=model.device), use_cache=False).logits
        token = int(logits[0, -1].float().argmax())
        if token in stop:
            break
        answer.append(token)
        sequence.append(token)
    return str(tokenizer.decode(answer, skip_special_tokens=True))


def virtual_tokens(model: Any) -> torch.Tensor | None:
    """The embeddings (1, tokens, hidden) of the prompt-learning adapter that is on, or None when none is:
    another method, or every adapter switched off (`disable_adapter`)."""
    if not isinstance(model, PeftModel) or not model.has_active_enabled_adapter:
        return None
    config = model.active_peft_config
    if not config.is_prompt_learning:
        return None
    if config.peft_type not in (PeftType.PROMPT_TUNING, PeftType.P_TUNING):
        raise ValueError(f"decoding {config.peft_type} adapters is not supported (only prompt tuning and P-tuning)")
    return model.get_prompt(batch_size=1)


class CachedLM:
    """Next-token logits of one sequence, fed a piece at a time, with a KV cache.

    A prompt-learning adapter (prompt tuning) puts its virtual tokens before the prompt, so they go into
    the cache with the first piece and the base model continues from that cache: PEFT's own cached path
    (its `generate`, or its forward with a cache) adds them again or misplaces them, and its answers are
    not the model's. Every other model is called as it is."""

    def __init__(self, model: Any) -> None:
        self.prompt = virtual_tokens(model)
        self.model = model.get_base_model() if self.prompt is not None else model
        self.past: Any = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.past is None and self.prompt is not None:
            embeds = self.model.get_input_embeddings()(input_ids)
            embeds = torch.cat((self.prompt.to(embeds.device, embeds.dtype), embeds), dim=1)
            out = self.model(inputs_embeds=embeds, use_cache=True)
        else:
            out = self.model(input_ids=input_ids, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1, :].float()


def greedy_cached(model: Any, tokenizer: PreTrainedTokenizerBase, ids: list[int], *, max_new_tokens: int) -> str:
    """Greedy decoding of one prompt, unpadded, with `CachedLM`: what `reference_greedy` gives, fast."""
    stop = eos_ids(tokenizer)
    step = CachedLM(model)
    answer: list[int] = []
    next_input = torch.tensor([ids], device=model.device)
    for _ in range(max_new_tokens):
        token = int(step(next_input).argmax(dim=-1).item())
        if token in stop:
            break
        answer.append(token)
        next_input = torch.tensor([[token]], device=model.device)
    return str(tokenizer.decode(answer, skip_special_tokens=True))


def generate_completions(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy completions of each prompt (given as ids), cut at the end-of-sequence token.

    Batches of left-padded prompts through `generate()`; for a prompt-learning adapter one prompt at a
    time through `greedy_cached` (left padding would sit between its virtual tokens and the prompt and
    shift their positions, and PEFT's cached generation gets them wrong)."""
    model.eval()
    prompt_learning = virtual_tokens(model) is not None
    size = 1 if prompt_learning else batch_size
    answers: list[str] = []
    for start in range(0, len(prompts), size):  # per batch of rows: where a progress report fits
        batch = prompts[start : start + size]
        if prompt_learning:
            answers.append(greedy_cached(model, tokenizer, batch[0], max_new_tokens=max_new_tokens))
        else:
            answers.extend(_generate_batch(model, tokenizer, batch, max_new_tokens=max_new_tokens))
    return answers


def _generate_batch(
    model: Any, tokenizer: PreTrainedTokenizerBase, batch: Sequence[list[int]], *, max_new_tokens: int
) -> list[str]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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
    return list(tokenizer.batch_decode(output[:, width:], skip_special_tokens=True))


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
