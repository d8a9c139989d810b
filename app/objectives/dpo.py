"""Direct preference optimization: raise the chosen answer's likelihood over the rejected one's, relative to a
frozen reference (the base with the adapter off, or the run continued from)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.objectives.base import Objective
from app.objectives.preference import LOGP_SERIES, PREFERENCE_METHODS, REWARD_PANELS, REWARD_SERIES

# TRL's DPO losses that need nothing beyond pairs and beta.
DpoLoss = Literal[
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
    "sigmoid_norm",
]  # fmt: skip


class DPOFields(BaseModel):
    loss_type: DpoLoss = Field(
        default="sigmoid",
        description="DPO only: the loss over the pair, as TRL names it: sigmoid (the paper's), ipo, hinge, "
        "robust (noisy labels, with label_smoothing), exo_pair, nca_pair, bco_pair, sppo_hard, apo_zero, "
        "apo_down, sigmoid_norm.",
    )
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
    reference=True,
    defaults={"learning_rate": 5e-5, "beta": 0.1},
)
