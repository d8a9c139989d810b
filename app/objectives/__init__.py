"""The training objectives: one module each, declaring what the rest of loradeck reads about it.

An objective says which RunSpec fields are its own (the form hides them for the others, the API refuses them
there), which dataset shapes it trains on, which PEFT methods it allows, which named metrics its trainer logs
and how the run page draws them, and how its adapter is evaluated after training. The worker's side of it
(the trainer, the evaluation) lives in `worker.engine.objectives.<name>`, a module of the same name.

Adding an objective: a module here with OBJECTIVE (and its fields' mixin, when it has fields of its own), its
entry in REGISTRY and ObjectiveFields below, and `worker/engine/objectives/<name>.py`.
"""

from __future__ import annotations

import typing
from typing import Literal

from app.objectives import dpo, grpo, kto, orpo, sft
from app.objectives.base import Objective, Panel, Series
from app.objectives.losses import LossFields
from app.objectives.preference import PreferenceFields

__all__ = ["REGISTRY", "Objective", "ObjectiveFields", "ObjectiveName", "Panel", "Series", "objective", "objectives"]

ObjectiveName = Literal["sft", "dpo", "orpo", "kto", "grpo"]

REGISTRY: dict[str, Objective] = {
    o.name: o for o in (sft.OBJECTIVE, dpo.OBJECTIVE, orpo.OBJECTIVE, kto.OBJECTIVE, grpo.OBJECTIVE)
}

assert set(typing.get_args(ObjectiveName)) == set(REGISTRY), "ObjectiveName and REGISTRY name the same objectives"


class ObjectiveFields(dpo.DPOFields, kto.KTOFields, PreferenceFields, LossFields, grpo.GRPOFields):
    """Every objective's own fields, flat in RunSpec as TRL's configs have them."""


def objective(name: str) -> Objective:
    return REGISTRY[name]


def objectives() -> list[Objective]:
    return list(REGISTRY.values())


def objectives_using(field_name: str) -> tuple[str, ...]:
    """The objectives a RunSpec field applies to; empty: all of them."""
    return tuple(name for name, o in REGISTRY.items() if field_name in o.fields)


def objectives_accepting(shape: str) -> tuple[str, ...]:
    """The objectives that train on a dataset shape."""
    return tuple(name for name, o in REGISTRY.items() if shape in o.shapes)
