"""The objective registry is the one place an objective is declared: RunSpec's rules, the form's fields and the
engine's modules all follow it."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from app.objectives import REGISTRY, objectives_accepting, objectives_using
from app.objectives.base import SHAPE_NAMES
from app.schemas import RunSpec
from app.web.forms import SECTIONS


def _refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        RunSpec.model_validate(values)
    return str(caught.value)


def test_each_objective_has_its_engine_module_and_known_shapes() -> None:
    for name, objective in REGISTRY.items():
        assert importlib.util.find_spec(f"worker.engine.objectives.{name}") is not None, name
        assert set(objective.shapes) <= set(SHAPE_NAMES), name
        assert {series.panel for series in objective.series} <= {panel.key for panel in objective.panels}, name


def test_every_objective_field_is_in_the_form_and_in_runspec() -> None:
    in_form = {name for _, _, names in SECTIONS for name in names}
    for objective in REGISTRY.values():
        for name in objective.fields:
            assert name in RunSpec.model_fields and name in in_form, (objective.name, name)


def test_shapes_and_fields_are_read_from_the_declarations() -> None:
    assert objectives_accepting("preference") == ("dpo", "orpo", "kto")
    assert objectives_accepting("unpaired") == ("kto",)
    assert objectives_using("beta") == ("dpo", "orpo", "kto", "grpo")
    assert objectives_using("rewards") == ("grpo",)
    assert objectives_accepting("prompt_completion") == ("sft", "grpo")
    assert objectives_using("packing") == ("sft",)
    assert objectives_using("learning_rate") == ()


def test_rules_follow_the_registry() -> None:
    assert "method: objective dpo trains with method lora or qlora, not ia3" in _refusal(objective="dpo", method="ia3")
    assert "loss_type: only for objectives dpo, grpo, not kto" in _refusal(objective="kto", loss_type="ipo")
    assert "beta: only for objectives dpo, orpo, kto, grpo, not sft" in _refusal(beta=0.5)
    assert "rewards: only for objective grpo, not sft" in _refusal(rewards=[{"function": "exact"}])
    # loss_type's choices are the objective's own; an objective's defaults of shared fields apply when not given.
    assert "loss_type: dapo is not a loss of objective dpo; choose one of sigmoid, ipo" in _refusal(
        objective="dpo", loss_type="dapo"
    )
    assert "loss_type: sigmoid is not a loss of objective grpo; choose one of dapo" in _refusal(
        objective="grpo", loss_type="sigmoid"
    )
    grpo = RunSpec(objective="grpo")
    assert (grpo.loss_type, grpo.beta, [r.function for r in grpo.rewards]) == ("dapo", 0.0, ["json_fields", "exact"])
    assert (RunSpec(objective="dpo").loss_type, RunSpec(objective="dpo").beta) == ("sigmoid", 0.1)
    assert "beta: objective dpo needs beta above 0" in _refusal(objective="dpo", beta=0)
    assert "a GRPO step trains whole groups of num_generations (3) completions" in _refusal(
        objective="grpo", num_generations=3
    )
    assert "per_device_train_batch_size: objective kto needs at least 2 rows per batch" in _refusal(
        objective="kto", per_device_train_batch_size=1
    )
    # A stored spec holds every field at its value: it reads back, whatever its objective.
    for name in REGISTRY:
        spec = RunSpec(objective=name, method="lora")
        assert RunSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert RunSpec(objective="orpo", method="lora").name == "orpo-lora-tiny-llama-r8"
