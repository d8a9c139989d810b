"""Decoding a model's answers: greedy and cached, batched, and the plain yardstick they are tested against.

`reference_greedy` (no cache, no padding, the whole sequence through the model at every step) is the
yardstick; `CachedLM` feeds one sequence a piece at a time with a KV cache (prompt-learning adapters' virtual
tokens put into the cache first), and `generate_completions` batches left-padded prompts through `generate()`.
The evaluation after training (worker.engine.evaluate) and the playground (worker.serving.generate) decode
with these, so their answers are the model's own for every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel, PeftType
from transformers import PreTrainedTokenizerBase

from worker.data.encode import encode_prompt


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
