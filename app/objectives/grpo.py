"""GRPO: reinforcement learning from verifiable rewards. For each prompt the policy writes a group of
completions, the run's rewards (app.objectives.rewards) score them, and each completion is pushed up or down by
how it scored against its group's mean; optionally held near the starting policy by a KL term."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from app.objectives.base import Objective, Panel, Series
from app.objectives.losses import GRPO_LOSSES
from app.objectives.preference import PREFERENCE_METHODS
from app.objectives.rewards import DEFAULT_REWARDS, DEFINITIONS, Reward

MAX_REWARDS = 8


class GRPOFields(BaseModel):
    rewards: list[Reward] = Field(
        default_factory=lambda: [reward.model_copy() for reward in DEFAULT_REWARDS],
        max_length=MAX_REWARDS,
        description="GRPO only: the built-in rewards that score each completion, each with a weight; the run "
        "trains on their weighted sum. Each function at most once. "
        + " ".join(f"{name}: {text}" for name, text in DEFINITIONS.items()),
    )
    num_generations: int = Field(
        default=8,
        ge=2,
        le=64,
        description="GRPO only: completions written per prompt, the group each is compared with; the batch "
        "(per_device_train_batch_size x gradient_accumulation_steps completions) holds whole groups.",
    )
    max_completion_length: int = Field(
        default=128, ge=1, le=8192, description="GRPO only: the longest completion written, in tokens."
    )
    temperature: float = Field(
        default=1.0,
        gt=0.0,
        le=2.0,
        description="GRPO only: sampling temperature of the completions (lower: closer to the greedy answer, "
        "less variety within a group to learn from).",
    )
    epsilon: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="GRPO only: how far one update may move a token's probability ratio (PPO's clip range).",
    )

    @field_validator("rewards")
    @classmethod
    def _one_each(cls, value: list[Reward]) -> list[Reward]:
        if not value:
            raise ValueError("rewards: choose at least one reward function")
        seen = [reward.function for reward in value]
        if repeated := sorted({name for name in seen if seen.count(name) > 1}):
            raise ValueError(
                f"rewards: {', '.join(repeated)} given twice; each function once (contains takes several texts)"
            )
        return value


REWARD_FUNCTION_SERIES = tuple(
    Series(f"rewards/{name}/mean", name.replace("_", " "), "reward_functions") for name in DEFINITIONS
)

OBJECTIVE = Objective(
    name="grpo",
    label="Reinforcement (GRPO)",
    summary="Write answers the chosen rewards score higher: sample a group per prompt, favour the better ones.",
    shapes=("prompt_completion", "messages"),
    methods=PREFERENCE_METHODS,
    fields=("rewards", "num_generations", "max_completion_length", "temperature", "beta", "loss_type", "epsilon"),
    series=(
        Series("reward", "reward (mean)", "reward"),
        Series("reward_std", "reward spread (std)", "reward"),
        Series("frac_reward_zero_std", "groups all scored alike", "reward"),
        *REWARD_FUNCTION_SERIES,
        Series("completions/mean_length", "mean length", "lengths"),
        Series("completions/max_length", "longest", "lengths"),
        Series("kl", "KL to the starting policy", "kl"),
        Series("completions/clipped_ratio", "completions cut at max length", "clipping"),
        Series("clip_ratio/region_mean", "tokens clipped (ratio)", "clipping"),
        Series("entropy", "entropy", "kl"),
    ),
    panels=(
        Panel("reward", "Reward"),
        Panel("reward_functions", "Each reward's mean", "score"),
        Panel("lengths", "Completion length", "tokens"),
        Panel("kl", "KL and entropy"),
        Panel("clipping", "Clipping", "share"),
    ),
    evaluation="reward",
    reference=True,
    generates=True,
    eval_loss=False,
    losses=GRPO_LOSSES,
    spec_defaults={"loss_type": "dapo", "beta": 0.0},
    # The answers' length: the reward evaluation then reuses the task evaluation's greedy answers.
    defaults={"learning_rate": 5e-5, "eval_max_new_tokens": 128},
)
