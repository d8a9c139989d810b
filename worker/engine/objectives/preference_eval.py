"""Held-out pairs scored after training: how often each side (the base, or the run continued from, and the trained
adapter) finds the chosen answer likelier than the rejected one, and by how much.

An answer's log-probability is the sum over its tokens after the prompt, the quantity DPO's loss compares. The
tokens are TRL's (DPOTrainer's tokenization: the prompt, then prompt + answer + eos tokenized whole, the answer
starting where the two part), so a pair scores here as the trainer saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from app.contracts.evaluation import PreferenceScore, PreferenceScores
from app.schemas import RunSpec
from worker.data.files import Row
from worker.engine.objectives.base import starting_point
from worker.engine.objectives.preference import trl_record

BATCH = 8  # sequences per forward pass
MAX_PAIRS = 2000  # an eval split of a large file is scored on its first pairs: enough to tell a few points apart


def _ids(tokenizer: PreTrainedTokenizerBase, text: Any, *, prompt_only: bool = False) -> list[int]:
    if isinstance(text, list):  # conversational: TRL renders it with the chat template
        rendered: Any = tokenizer.apply_chat_template(
            text, tokenize=True, return_dict=True, add_generation_prompt=prompt_only
        )
        return list(rendered["input_ids"])
    return list(tokenizer(text)["input_ids"])


def pair_token_ids(
    tokenizer: PreTrainedTokenizerBase, record: dict[str, Any]
) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids of a TRL pair record, as DPOTrainer tokenizes it."""
    prompt = record["prompt"]
    if isinstance(prompt, list):
        prompt_ids = _ids(tokenizer, prompt, prompt_only=True)
        chosen_ids = _ids(tokenizer, prompt + record["chosen"])
        rejected_ids = _ids(tokenizer, prompt + record["rejected"])
    else:
        eos = tokenizer.eos_token or ""

        def with_eos(answer: str) -> str:
            return answer if answer.endswith(eos) else answer + eos

        prompt_ids = _ids(tokenizer, prompt)
        chosen_ids = _ids(tokenizer, prompt + with_eos(record["chosen"]))
        rejected_ids = _ids(tokenizer, prompt + with_eos(record["rejected"]))
    shared = min(_common_prefix(prompt_ids, chosen_ids), _common_prefix(prompt_ids, rejected_ids))
    return prompt_ids[:shared], chosen_ids[shared:], rejected_ids[shared:]


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


@torch.no_grad()
def completion_logps(
    model: torch.nn.Module, sequences: Sequence[tuple[list[int], list[int]]], *, max_length: int, pad_id: int
) -> list[float]:
    """Each (prompt ids, answer ids) sequence's summed log-probability of its answer tokens, cut to max_length
    from the start as TRL's collator cuts it."""
    device = next(model.parameters()).device
    sums: list[float] = []
    for start in range(0, len(sequences), BATCH):
        chunk = [((p + a)[:max_length], len(p)) for p, a in sequences[start : start + BATCH]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        answer = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (ids, prompt_length) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            answer[row, prompt_length : len(ids)] = True
        input_ids, attention, answer = input_ids.to(device), attention.to(device), answer.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums += (token_logps * answer[:, 1:]).sum(dim=1).tolist()
    return sums


def pair_logps(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict[str, Any]], *, max_length: int
) -> tuple[list[float], list[float]]:
    """Summed log-probabilities of each pair's chosen and of its rejected answer."""
    ids = [pair_token_ids(tokenizer, record) for record in records]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chosen = completion_logps(model, [(p, c) for p, c, _ in ids], max_length=max_length, pad_id=int(pad_id or 0))
    rejected = completion_logps(model, [(p, r) for p, _, r in ids], max_length=max_length, pad_id=int(pad_id or 0))
    return chosen, rejected


def preference_score(chosen: Sequence[float], rejected: Sequence[float]) -> PreferenceScore:
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return PreferenceScore(
        rows=len(margins),
        accuracy=sum(m > 0 for m in margins) / len(margins),
        margin=sum(margins) / len(margins),
    )


def score_pairs(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, spec: RunSpec, rows: Sequence[Row]
) -> PreferenceScores | str:
    """The eval pairs scored by the starting point (base, or the run continued from) and the trained adapter;
    or why they cannot be."""
    pairs = [trl_record(row) for row in rows if row.shape == "preference"][:MAX_PAIRS]
    if not rows:
        return "no eval data: set eval_split or eval_dataset to score the pairs"
    if not pairs:
        return "preference accuracy needs pairs (prompt/chosen/rejected); the eval rows are unpaired"
    was_training = model.training
    model.eval()
    try:
        adapter = preference_score(*pair_logps(model, tokenizer, pairs, max_length=spec.max_seq_length))
        with starting_point(model, spec):
            base = preference_score(*pair_logps(model, tokenizer, pairs, max_length=spec.max_seq_length))
    finally:
        model.train(was_training)
    return PreferenceScores(base=base, adapter=adapter)
