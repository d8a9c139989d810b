"""The new-run form for GRPO: its fields follow the objective, the rewards arrive as JSON in one field and every
mistake in them is refused at that field naming the fix, the loss's choices are the objective's own, the defaults
are GRPO's, and the preset "GRPO on the sample" makes a run the pre-flight accepts."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import TINY_MODEL_DIR, get_settings
from app.objectives import objective
from app.objectives.losses import DPO_LOSSES, GRPO_LOSSES
from app.schemas import SAMPLE_EVAL, SAMPLE_PAIRS, SAMPLE_TRAIN
from app.web.form_presets import PRESET_NOTES, PRESETS, display, form_defaults, preset_values
from app.web.forms import check_form, form_values


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def grpo_form(**changes: str) -> dict[str, str]:
    """What the form sends for a GRPO run on the sample, as the browser sends it: text."""
    values = {name: display(value, name) for name, value in form_defaults(None, "grpo").items()}
    values |= {"base_model": str(TINY_MODEL_DIR), "method": "lora", "max_steps": "2", "name": "grpo form"}
    return {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in values.items()}


def checked(form: dict[str, str]) -> tuple[Any, dict[str, str]]:
    from starlette.datastructures import FormData

    return check_form(form_values(FormData(list(form.items()))), get_settings())


def test_the_rewards_json_becomes_the_specs_rewards(loradeck_env: dict[str, str]) -> None:
    rewards = [
        {"function": "json_fields", "weight": 2, "field_weights": {"city": 2, "floor": 0.5}},
        {"function": "regex", "weight": 0.5, "pattern": r"^\{.*\}$"},
        {"function": "contains", "texts": ["號", "市"]},
        {"function": "length", "min_tokens": 4, "max_tokens": 64},
    ]
    spec, errors = checked(grpo_form() | {"rewards": json.dumps(rewards)})
    assert errors == {}
    assert spec.objective == "grpo"
    assert [r.model_dump(exclude_defaults=True) for r in spec.rewards] == [
        {"function": "json_fields", "weight": 2.0, "field_weights": {"city": 2.0, "floor": 0.5}},
        {"function": "regex", "weight": 0.5, "pattern": r"^\{.*\}$"},
        {"function": "contains", "texts": ["號", "市"]},
        {"function": "length", "min_tokens": 4, "max_tokens": 64},
    ]


@pytest.mark.parametrize(
    ("rewards", "words"),
    [
        ('[{"function": "exact"', "rewards: not valid JSON at line 1, column 22 (Expecting ',' delimiter)"),
        ('{"function": "exact"}', "rewards: give a JSON list of objects, one per reward"),
        ("[" * 5000 + "]" * 5000, "rewards: JSON nested too deeply"),
        ("[]", "rewards: choose at least one reward function"),
        ('[{"function": "regex", "pattern": "(a"}]', "rewards: reward 1: regex pattern '(a' does not compile"),
        ('[{"function": "exact"}, {"function": "regex"}]', "rewards: reward 2: regex needs a pattern"),
        ('[{"function": "exact", "pattern": "x"}]', "rewards: reward 1: exact takes no pattern (it takes only a"),
        ('[{"function": "exact"}, {"function": "exact"}]', "rewards: exact given twice"),
        ('[{"function": "exact", "weight": 0}]', "rewards: reward 1, weight: Input should be greater than 0"),
        ('[{"function": "judge"}]', "rewards: reward 1, function: Input should be 'json_valid'"),
        ('[{"function": "length", "max_tokens": 0}]', "rewards: reward 1: length needs max_tokens above 0"),
        ('[{"function": "json_fields", "field_weights": {"city": "x"}}]', "rewards: reward 1, field_weights.city:"),
        ('[{"function": "contains"}]', "rewards: reward 1: contains needs texts"),
        ('[{"function": "exact", "beta": 1}]', "rewards: reward 1, beta: Extra inputs are not permitted"),
    ],
)
def test_each_mistake_in_the_rewards_is_refused_at_the_field_naming_the_fix(
    loradeck_env: dict[str, str], rewards: str, words: str
) -> None:
    spec, errors = checked(grpo_form() | {"rewards": rewards})
    assert spec is None
    assert set(errors) == {"rewards"}, errors  # another field's name in it (beta) does not set that field aside
    assert words in errors["rewards"], errors["rewards"]


def test_a_refused_reward_is_shown_under_the_rewards_field_with_what_was_typed(client: TestClient) -> None:
    typed = '[{"function": "regex", "pattern": "(a"}]'
    page = client.post("/runs", data=grpo_form() | {"rewards": typed}, headers={"HX-Request": "true"})
    assert page.status_code == 422
    error = re.search(r'<small class="error" role="alert" id="e-rewards" data-field="rewards">(.*?)</small>', page.text)
    assert error and "regex pattern &#39;(a&#39; does not compile" in error.group(1)
    textarea = re.search(r'<textarea id="f-rewards" name="rewards"[^>]*>(.*?)</textarea>', page.text, re.S)
    assert textarea and json.loads(html.unescape(textarea.group(1))) == json.loads(typed)
    bad_json = client.post("/runs", data=grpo_form() | {"rewards": "[{"}, headers={"HX-Request": "true"})
    assert 'id="e-rewards"' in bad_json.text and "not valid JSON" in bad_json.text
    assert ">[{</textarea>" in bad_json.text  # kept as typed, to be fixed there


def test_the_loss_offers_the_objectives_own_losses(client: TestClient) -> None:
    assert objective("grpo").losses == GRPO_LOSSES and objective("dpo").losses == DPO_LOSSES
    for chosen, own, others in (("grpo", GRPO_LOSSES, DPO_LOSSES), ("dpo", DPO_LOSSES, GRPO_LOSSES)):
        page = client.get(f"/runs/new?objective={chosen}").text
        select = page[page.index('<select id="f-loss_type"') :]
        select = select[: select.index("</select>")]
        assert re.search(r'<label for="f-loss_type">Loss <code', page)
        options = dict(re.findall(r'<option value="([a-z_]+)"[^>]*data-objectives="([a-z ]+)"', select))
        assert {loss for loss, takes in options.items() if chosen in takes.split()} == set(own)
        for loss in others:  # the other objective's losses are there for the script, refused for this one
            assert re.search(rf'<option value="{loss}"[^>]* disabled hidden>', select), loss
        selected = re.search(r'<option value="([a-z_]+)" selected', select)
        assert selected and selected.group(1) == own[0]  # dapo for GRPO, sigmoid for DPO


def test_grpo_defaults_are_its_own(client: TestClient) -> None:
    defaults = form_defaults(None, "grpo")
    assert defaults["loss_type"] == "dapo" and defaults["beta"] == 0.0
    assert defaults["learning_rate"] == objective("grpo").defaults["learning_rate"]
    assert defaults["dataset"] == str(SAMPLE_TRAIN) and defaults["eval_dataset"] == str(SAMPLE_EVAL)
    assert form_defaults(None, "dpo")["beta"] == 0.1 and form_defaults(None, "sft")["loss_type"] == "sigmoid"
    page = client.get("/runs/new?objective=grpo").text
    assert re.search(r'<input id="f-beta" name="beta" type="number" value="0.0"', page)
    labels = {"rewards": "Rewards", "num_generations": "Completions per prompt", "epsilon": "Clip range (epsilon)"}
    for name, label in labels.items():
        field = page[page.index(f'data-field="{name}"') :][:1500]
        assert f'<label for="f-{name}">{label} <code' in field
        assert 'data-objectives="grpo"' in page[page.index(f'data-field="{name}"') - 40 :][:300]
    # The editor's functions and their definitions come with the page.
    rule = re.search(r'<script type="application/json" id="reward-rule">(.*?)</script>', page, re.S)
    assert rule and json.loads(html.unescape(rule.group(1)))["parameters"]["regex"] == ["pattern"]
    # The default rewards as the textarea holds them: one object a line, parameters at their defaults left out.
    textarea = re.search(r'<textarea id="f-rewards" name="rewards"[^>]*>(.*?)</textarea>', page, re.S)
    assert textarea and json.loads(html.unescape(textarea.group(1))) == [
        {"function": "json_fields", "weight": 1.0},
        {"function": "exact", "weight": 1.0},
    ]
    sft = client.get("/runs/new").text
    assert re.search(r'data-field="rewards"[^>]*data-objectives="grpo"\s+hidden', sft)


def test_the_grpo_preset_makes_a_run_the_preflight_accepts(loradeck_env: dict[str, str]) -> None:
    label, values = PRESETS["grpo_sample"]
    assert label == "GRPO on the sample, continued from an SFT run"
    assert "init_from_run" in PRESET_NOTES["grpo_sample"]
    shown = preset_values()["grpo_sample"]
    rewards = [{"function": "json_fields", "weight": 1.0}, {"function": "exact", "weight": 1.0}]
    assert json.loads(shown["rewards"]) == rewards
    spec, errors = checked(grpo_form() | {k: str(v) for k, v in shown.items()})
    assert errors == {}
    assert (spec.objective, spec.dataset, spec.eval_dataset) == ("grpo", str(SAMPLE_TRAIN), str(SAMPLE_EVAL))
    assert [r.function for r in spec.rewards] == ["json_fields", "exact"]
    assert spec.per_device_train_batch_size % spec.num_generations == 0


def test_grpo_trains_on_prompts_and_messages_and_refuses_pairs(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    chat = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    chat.write_text(json.dumps(row) + "\n", encoding="utf-8")
    spec, errors = checked(grpo_form() | {"dataset": str(chat), "eval_dataset": "", "eval_split": "0"})
    assert errors == {} and spec.dataset == str(chat)
    spec, errors = checked(grpo_form() | {"dataset": str(SAMPLE_PAIRS), "eval_dataset": "", "eval_split": "0"})
    assert spec is None
    assert errors["dataset"].startswith("dataset: objective grpo trains on prompt/completion or messages rows;")
    assert "has prompt/chosen/rejected rows" in errors["dataset"]
