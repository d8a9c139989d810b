"""A GRPO run's rewards as the API and the form take them: a reward given what it cannot use, or without what it
needs, is refused with a message that names the reward, the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.objectives.rewards import DEFINITIONS, PARAMETERS, Reward
from app.schemas import RunSpec

GRPO = {
    "base_model": str(TINY_MODEL_DIR),
    "dataset": str(SAMPLE_DATASET_DIR / "train.jsonl"),
    "objective": "grpo",
    "per_device_train_batch_size": 8,  # one group of the default 8 generations
}


def _refusal(*rewards: dict[str, Any]) -> str:
    """The message RunSpec refuses these rewards with (the rest of the spec is valid)."""
    with pytest.raises(ValidationError) as caught:
        RunSpec.model_validate({**GRPO, "rewards": list(rewards)})
    return str(caught.value)


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"function": "exact", "pattern": "x"}, "rewards: exact takes no pattern (it takes only a weight)"),
        ({"function": "json_fields", "texts": ["a"]}, "rewards: json_fields takes no texts (it takes field_weights)"),
        ({"function": "contains", "texts": ["a"], "max_tokens": 9}, "contains takes no max_tokens (it takes texts)"),
        ({"function": "length", "max_tokens": 9, "pattern": "a"}, "takes no pattern (it takes min_tokens, max_tokens)"),
        ({"function": "regex"}, "rewards: regex needs a pattern, e.g. ^\\{.*\\}$"),
        ({"function": "regex", "pattern": "(unclosed"}, "rewards: regex pattern '(unclosed' does not compile"),
        ({"function": "regex", "pattern": "a" * 501}, "at most 500 characters"),
        ({"function": "contains"}, "rewards: contains needs texts, the strings to look for"),
        ({"function": "not_contains", "texts": [""]}, "rewards: not_contains needs texts"),
        ({"function": "length"}, "rewards: length needs max_tokens above 0 and at least min_tokens"),
        ({"function": "length", "min_tokens": 10, "max_tokens": 5}, "length needs max_tokens above 0 and at least"),
        ({"function": "json_fields", "field_weights": {"city": -1}}, "field_weights are 0 or more"),
        ({"function": "json_fields", "field_weights": {"city": 0}}, "give every field 0; weigh at least one"),
        ({"function": "exact", "weight": 0}, "rewards.0.weight\n  Input should be greater than 0"),
        ({"function": "exact", "weights": 2}, "rewards.0.weights\n  Extra inputs are not permitted"),
        ({"function": "bleu"}, "rewards.0.function\n  Input should be 'json_valid', 'json_keys', 'json_fields'"),
    ],
)
def test_a_reward_is_refused_with_what_to_fix(reward: dict[str, Any], message: str) -> None:
    assert message in _refusal(reward)


def test_a_function_given_twice_is_refused_by_name() -> None:
    refused = _refusal(
        {"function": "contains", "texts": ["a"]}, {"function": "exact"}, {"function": "contains", "texts": ["b"]}
    )
    assert "rewards: contains given twice; each function once (contains takes several texts)" in refused
    assert "rewards: choose at least one reward function" in _refusal()


def test_each_function_with_what_it_takes_is_accepted() -> None:
    given: dict[str, dict[str, Any]] = {
        "json_fields": {"field_weights": {"city": 2.0, "section": 0.0}},
        "regex": {"pattern": r"^\{.*\}$"},
        "contains": {"texts": ["縣"]},
        "not_contains": {"texts": ["TODO", "```"]},
        "length": {"min_tokens": 0, "max_tokens": 64},
    }
    assert set(given) == set(PARAMETERS)
    rewards = [{"function": name, "weight": 0.5, **given.get(name, {})} for name in DEFINITIONS]
    spec = RunSpec.model_validate({**GRPO, "rewards": rewards})
    assert [reward.function for reward in spec.rewards] == list(DEFINITIONS)
    assert spec.rewards[2] == Reward(function="json_fields", weight=0.5, field_weights={"city": 2.0, "section": 0.0})
    # A parameter left at its empty value is no parameter: a form posts every field.
    assert Reward(function="exact", pattern="", texts=[], min_tokens=0).function == "exact"
