"""What the preference objectives (DPO, ORPO, KTO) share: pairs as data, beta (GRPO's KL weight too), reward
metrics and panels."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.objectives.base import Panel, Series

PREFERENCE_METHODS = ("lora", "qlora")  # the adapter is disabled for the reference: LoRA's own switch

REWARD_SERIES = (
    Series("rewards/margins", "reward margin", "rewards"),
    Series("rewards/chosen", "chosen reward", "rewards"),
    Series("rewards/rejected", "rejected reward", "rewards"),
    Series("rewards/accuracies", "reward accuracy", "accuracy"),
)
LOGP_SERIES = (
    Series("logps/chosen", "log-prob chosen", "logps"),
    Series("logps/rejected", "log-prob rejected", "logps"),
)
REWARD_PANELS = (
    Panel("rewards", "Rewards"),
    Panel("accuracy", "Reward accuracy", "share"),
    Panel("logps", "Log-probabilities"),
)


class PreferenceFields(BaseModel):
    beta: float = Field(
        default=0.1,
        ge=0.0,
        le=100.0,
        description="DPO and KTO: how far the policy may move from the reference (higher: closer to it); "
        "ORPO: the weight of its odds-ratio term beside the supervised loss (TRL's beta, the paper's lambda); "
        "all three above 0. GRPO (default 0): the weight of the KL term to the starting policy (the base, or "
        "the run continued from); 0: no KL term and no reference pass.",
    )
