"""Token accuracy on the eval data: the share of trained label tokens whose argmax prediction is right.

It is computed inside Trainer's own evaluation loop, beside the eval loss and from the same forward pass:
each batch's logits are reduced to their argmax at once (`predicted_tokens`, Trainer's
preprocess_logits_for_metrics) and counted (`TokenAccuracy`, with batch_eval_metrics), so an evaluation keeps
two numbers, never the logits or predictions of the whole eval set (a vocabulary of 150k makes the logits of
one 2k-token row 1.2 GB in fp32).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import EvalPrediction

# Label positions that are not trained (prompt, padding, each packed example's first token) hold this.
from worker.data.chat import IGNORE_INDEX


def predicted_tokens(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """The token predicted for each label position: the argmax of the logits one position earlier (a causal
    LM predicts the next token, as its loss shifts the labels), IGNORE_INDEX at the first position."""
    if isinstance(logits, tuple | list):  # a model that returns more than its logits: they come first
        logits = logits[0]
    # Prompt tuning's logits start with its virtual tokens (whose labels PEFT adds and ignores): align from the end.
    predicted = logits.argmax(dim=-1)[:, -labels.shape[1] :]
    aligned = torch.full_like(labels, IGNORE_INDEX)
    aligned[:, 1:] = predicted[:, :-1]
    return aligned


class TokenAccuracy:
    """Trainer's compute_metrics with batch_eval_metrics: counts batch by batch, the share at the last batch."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def __call__(self, prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        predicted = torch.as_tensor(prediction.predictions)
        labels = torch.as_tensor(prediction.label_ids).to(predicted.device)
        trained = labels != IGNORE_INDEX
        # One sync per batch for the two counts; the evaluation's forward pass dwarfs it.
        self.correct += int((predicted[trained] == labels[trained]).sum().item())
        self.total += int(trained.sum().item())
        if not compute_result:
            return {}
        correct, total = self.correct, self.total
        self.correct = self.total = 0  # the next evaluation counts afresh
        # Trainer prefixes the name: eval_token_accuracy.
        return {"token_accuracy": correct / total} if total else {}
