"""The merge's proof: the merged model against the adapter on its base, on a few prompts of the run's own data.

Their logits must agree (it is the same function), within what rounding to the output dtype explains relative
to each position's logits, and differ from the bare base's (else the adapter changed nothing).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from worker.data.encode import read_rows

# Merged vs adapter-on-base, both run in fp32, judged per position (row of logits) relative to that row's
# spread (its standard deviation over the vocabulary): rounding a weight to the output dtype moves a logit
# in proportion to the logits' own size, so a model with peaked (large) logits moves them by more in
# absolute terms (a correct bf16 merge of a small model with a scaled-up head: 0.1) while the relative
# error stays that of the dtype (1e-2 there, at 1, 30 or 100 times the head). The allowance is 16 units of
# the output dtype's rounding (2^-8 for bf16, 2^-11 for fp16) relative to the spread; fp32 merges differ
# only in summation order (2e-6 seen) and get 1e-4. A wrong merge (a module's delta left out, or applied
# at the wrong scale) errs by the size of the adapter's own effect: 0.1 to 1.8 measured, refused. Top-1
# agreement and the largest KL divergence are recorded beside it, to read the risk in predictions.
REL_TOLERANCES = {"float32": 1e-4, "bfloat16": 16 * 2**-8, "float16": 16 * 2**-11}
MIN_SPREAD = 1e-3  # a row of (nearly) equal logits is judged against this spread, not against zero
CHANGED_THRESHOLD = 1e-6  # merged vs base: below this the adapter did nothing
CHECK_PROMPTS = 3
CHECK_TOKENS = 256  # prompts are cut to this many tokens: the check is about weights, not long contexts
TEXT_CHARS = 200  # a row without a prompt contributes the start of its text


class ArtifactError(RuntimeError):
    """An artifact's work refused, with a message a user can act on and the figures it was judged by."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details


class MergeError(ArtifactError):
    """The merge cannot be offered; the message says why in plain words, and `details` holds the figures
    it was judged by (recorded on the failed artifact)."""


def check_merge(
    base_dir: Path, adapter_dir: Path, merged_dir: Path, prompts: list[str], *, trust: bool
) -> dict[str, float]:
    """The merged model (stock transformers, fp32, from its folder) against adapter-on-base over the
    prompts, position by position (`compare_logits`), and its largest logit difference from the bare
    base (`base_diff`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=trust)
    inputs = [tokenizer(prompt, return_tensors="pt").input_ids[:, :CHECK_TOKENS] for prompt in prompts]
    inputs = [ids for ids in inputs if ids.numel()]
    if not inputs:
        raise MergeError("the dataset's first rows tokenize to nothing, so the merge cannot be checked")
    load = {"dtype": torch.float32, "device_map": {"": "cpu"}, "use_safetensors": True, "trust_remote_code": trust}
    # One model in memory at a time: the base, then the same base with the adapter, then the merged one.
    base = AutoModelForCausalLM.from_pretrained(base_dir, **load)
    base_logits = _logits(base, inputs)
    adapter_logits = _logits(PeftModel.from_pretrained(base, str(adapter_dir)), inputs)
    del base
    gc.collect()
    merged_logits = _logits(AutoModelForCausalLM.from_pretrained(merged_dir, **load), inputs)
    gc.collect()
    figures = compare_logits(torch.cat(merged_logits, dim=1), torch.cat(adapter_logits, dim=1))
    figures["base_diff"] = max(float((m - b).abs().max()) for m, b in zip(merged_logits, base_logits, strict=True))
    return figures


def compare_logits(merged: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Logits (positions, vocab) of the merged model against the reference's (adapter-on-base):
    `max_rel_diff`, the largest difference in a row over that row's spread (standard deviation over the
    vocabulary, at least MIN_SPREAD); `max_abs_diff`, the largest difference; `top1_agreement`, the share
    of positions whose most likely next token is the same; `max_kl`, the largest KL(reference || merged)
    in nats."""
    merged, reference = merged.reshape(-1, merged.shape[-1]).float(), reference.reshape(-1, reference.shape[-1]).float()
    difference = (merged - reference).abs().amax(dim=-1)
    spread = reference.std(dim=-1).clamp(min=MIN_SPREAD)
    log_p, log_q = torch.log_softmax(reference, dim=-1), torch.log_softmax(merged, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return {
        "max_rel_diff": float((difference / spread).max()),
        "max_abs_diff": float(difference.max()),
        "top1_agreement": float((merged.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean()),
        "max_kl": max(float(kl.max()), 0.0),
    }


@torch.no_grad()
def _logits(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()  # dropout off: the models must be compared as the same function
    return [model(input_ids=ids).logits.float() for ids in inputs]


def check_prompts(dataset: str | Path, limit: int = CHECK_PROMPTS) -> list[str]:
    """The first rows of the run's dataset as prompts: a row's prompt (a preference row's too), else the start of
    its text (a text row's text, a conversation's turns joined)."""
    prompts = []
    for row in read_rows(dataset, limit=limit):
        if row.messages:  # a conversation, or a preference row's prompt turns
            prompts.append("\n".join(message.get("content", "") for message in row.messages)[:TEXT_CHARS])
        elif row.shape == "text":
            prompts.append(row.text[:TEXT_CHARS])
        else:  # prompt/completion, and preference rows (pairs or unpaired) with a text prompt
            prompts.append(row.prompt)
    return prompts
