"""`loss_type`: one RunSpec field whose choices are TRL's losses of the objective chosen (DPO's pair losses,
GRPO's policy losses); each objective names its own (Objective.losses) and its default (Objective.spec_defaults)."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, Field

DPO_LOSSES = (
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
    "sigmoid_norm",
)  # fmt: skip
# GRPO's token-level losses (TRL 1.16); luspo and vespo need sequence-level importance sampling, not offered.
GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo")

Loss = Literal[
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
    "sigmoid_norm", "dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo",
]  # fmt: skip
assert typing.get_args(Loss) == DPO_LOSSES + GRPO_LOSSES, "Loss lists DPO's losses then GRPO's"


class LossFields(BaseModel):
    loss_type: Loss = Field(
        default="sigmoid",
        description="The loss, as TRL names it. DPO: sigmoid (the paper's), ipo, hinge, robust (noisy labels, with "
        "label_smoothing), exo_pair, nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, sigmoid_norm. GRPO "
        "(default dapo): dapo (token losses averaged over the batch's tokens), grpo (per completion: favours short "
        "right answers), dr_grpo (over a constant: no length bias), bnpo (over the local batch's tokens), cispo "
        "(clips the importance weights), sapo (a soft gate instead of clipping).",
    )
