"""ORPO: supervised loss on the chosen answer plus an odds-ratio term against the rejected one; no reference."""

from __future__ import annotations

from app.objectives.base import Objective, Series
from app.objectives.preference import LOGP_SERIES, PREFERENCE_METHODS, REWARD_PANELS, REWARD_SERIES

OBJECTIVE = Objective(
    name="orpo",
    label="Preference (ORPO)",
    summary="Learn the chosen answers and prefer them to the rejected ones in one loss, without a reference.",
    shapes=("preference",),
    methods=PREFERENCE_METHODS,
    fields=("beta",),
    series=(
        *REWARD_SERIES,
        *LOGP_SERIES,
        Series("nll_loss", "supervised loss", "rewards"),
        Series("log_odds_ratio", "log odds ratio", "rewards"),
    ),
    panels=REWARD_PANELS,
    evaluation="preference",
    sequences_per_example=2,
    beta_above_zero=True,
    defaults={"learning_rate": 5e-5, "beta": 0.1},
)
