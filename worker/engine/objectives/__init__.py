"""The worker's side of each objective: its data, its training arguments and its trainer, one module per objective
named as app.objectives names it (sft, dpo, orpo, kto; the preference ones share `preference`).

The training steps (worker.engine.steps) ask `engine(spec)` for the run's module and call it; nothing else in the
engine knows which objective it trains.
"""

from __future__ import annotations

import importlib
from typing import cast

from app.objectives import REGISTRY
from app.schemas import RunSpec
from worker.engine.objectives.base import ObjectiveEngine, TrainingSetup

__all__ = ["ObjectiveEngine", "TrainingSetup", "engine", "named_values"]


def engine(spec: RunSpec) -> ObjectiveEngine:
    # Imported on demand: an SFT run never imports TRL.
    return cast(ObjectiveEngine, importlib.import_module(f"{__name__}.{spec.objective}"))


def named_values(spec: RunSpec) -> tuple[str, ...]:
    """The objective's named metrics (TRL's names) that each metric point keeps in Metric.values."""
    return tuple(series.key for series in REGISTRY[spec.objective].series)
