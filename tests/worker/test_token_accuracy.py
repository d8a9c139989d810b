"""Token accuracy beside the eval loss: the share of trained label tokens whose argmax prediction is right."""

from __future__ import annotations

import pytest
import torch
from transformers import EvalPrediction

from worker.engine.token_accuracy import IGNORE_INDEX, TokenAccuracy, predicted_tokens

X = IGNORE_INDEX


def _logits(predicted: list[list[int]], vocab: int = 6) -> torch.Tensor:
    """Logits whose argmax at each position is the given token."""
    logits = torch.zeros(len(predicted), len(predicted[0]), vocab)
    for row, tokens in enumerate(predicted):
        for position, token in enumerate(tokens):
            logits[row, position, token] = 5.0
    return logits


def _prediction(predicted: torch.Tensor, labels: torch.Tensor) -> EvalPrediction:
    # With batch_eval_metrics Trainer hands over each batch's tensors as they are, not numpy arrays.
    return EvalPrediction(predictions=predicted, label_ids=labels)  # type: ignore[arg-type]


def test_each_label_is_scored_against_the_prediction_one_position_earlier() -> None:
    # Position t predicts the token at t + 1, as a causal LM's loss reads it.
    logits = _logits([[1, 2, 3, 4], [5, 5, 5, 5]])
    labels = torch.tensor([[9, 1, 2, 0], [X, X, 5, 1]])
    assert predicted_tokens(logits, labels).tolist() == [[X, 1, 2, 3], [X, 5, 5, 5]]


def test_prompt_tunings_virtual_tokens_are_skipped() -> None:
    # Two virtual tokens lead the logits; the labels cover the real tokens only.
    logits = _logits([[0, 0, 1, 2, 3]])
    assert predicted_tokens(logits, torch.tensor([[7, 1, 2]])).tolist() == [[X, 1, 2]]


def test_only_trained_labels_count_and_batches_add_up_to_one_share() -> None:
    accuracy = TokenAccuracy()
    # Batch 1: 3 trained labels (-100 ignored, prompt and padding alike), 2 right.
    batch_1 = torch.tensor([[X, X, 4, 2], [X, 3, X, X]])
    predictions_1 = torch.tensor([[X, 4, 4, 1], [X, 3, 3, 3]])
    assert accuracy(_prediction(predictions_1, batch_1), compute_result=False) == {}
    # Batch 2: 2 trained labels, 1 right. A prediction where the label is ignored is never counted.
    batch_2 = torch.tensor([[X, 1, 5, X]])
    predictions_2 = torch.tensor([[X, 1, 0, 0]])
    result = accuracy(_prediction(predictions_2, batch_2), compute_result=True)
    assert result == {"token_accuracy": pytest.approx(3 / 5)}

    # The next evaluation counts afresh.
    again = accuracy(_prediction(predictions_2, batch_2), compute_result=True)
    assert again == {"token_accuracy": pytest.approx(1 / 2)}


def test_a_batch_with_nothing_trained_gives_no_figure_rather_than_a_division_by_zero() -> None:
    labels = torch.full((2, 3), X)
    assert TokenAccuracy()(_prediction(labels.clone(), labels), compute_result=True) == {}


def test_logits_to_share_end_to_end() -> None:
    logits = _logits([[1, 2, 3, 4, 0]])
    labels = torch.tensor([[X, 1, 2, 0, 0]])  # 4 trained; predicted 1, 2, 3, 4: the first two right
    predicted = predicted_tokens(logits, labels)
    result = TokenAccuracy()(_prediction(predicted, labels), compute_result=True)
    assert result == {"token_accuracy": pytest.approx(0.5)}
