"""KTO: answers labelled good or bad one at a time (no pairs needed), against a frozen reference."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.objectives.base import Objective, Series
from app.objectives.preference import LOGP_SERIES, PREFERENCE_METHODS, REWARD_PANELS


class KTOFields(BaseModel):
    desirable_weight: float = Field(
        default=1.0,
        gt=0.0,
        le=100.0,
        description="KTO only: the weight of the answers labelled good; raise it when they are fewer than the bad.",
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0.0, le=100.0, description="KTO only: the weight of the answers labelled bad."
    )


OBJECTIVE = Objective(
    name="kto",
    label="Preference (KTO)",
    summary="Make answers labelled good likelier and bad ones less likely, one answer at a time.",
    shapes=("unpaired", "preference"),
    methods=PREFERENCE_METHODS,
    fields=("beta", "desirable_weight", "undesirable_weight"),
    series=(
        Series("rewards/margins", "reward margin", "rewards"),
        Series("rewards/chosen", "good answers' reward", "rewards"),
        Series("rewards/rejected", "bad answers' reward", "rewards"),
        Series("kl", "KL to the reference", "rewards"),
        *LOGP_SERIES,
    ),
    panels=REWARD_PANELS[::2],
    evaluation="preference",
    sequences_per_example=2,
    beta_above_zero=True,
    reference=True,
    min_batch_size=2,
    defaults={"learning_rate": 5e-5, "beta": 0.1},
)
