"""Direct preference optimization: raise the chosen answer's likelihood over the rejected one's, relative to a
frozen reference (the base with the adapter off, or the run continued from)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.objectives.base import Objective
from app.objectives.losses import DPO_LOSSES
from app.objectives.preference import LOGP_SERIES, PREFERENCE_METHODS, REWARD_PANELS, REWARD_SERIES


class DPOFields(BaseModel):
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="DPO only: the share of pairs assumed mislabelled (robust and sigmoid losses; exo_pair's "
        "epsilon); 0: none.",
    )


OBJECTIVE = Objective(
    name="dpo",
    label="Preference (DPO)",
    summary="Prefer the chosen answer to the rejected one, staying near a frozen reference.",
    shapes=("preference",),
    methods=PREFERENCE_METHODS,
    fields=("beta", "loss_type", "label_smoothing"),
    series=(*REWARD_SERIES, *LOGP_SERIES),
    panels=REWARD_PANELS,
    evaluation="preference",
    sequences_per_example=2,
    beta_above_zero=True,
    reference=True,
    losses=DPO_LOSSES,
    defaults={"learning_rate": 5e-5, "beta": 0.1},
)
