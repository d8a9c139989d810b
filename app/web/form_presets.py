"""What the new-run form proposes: its defaults (RunSpec's, with those that follow the dataset and the objective),
the presets above it, and the bundled samples' recipes. static/js/presets.js applies the same rules in the page."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.dataset_shapes import first_row_shape
from app.objectives import REGISTRY, Objective
from app.objectives.rewards import Reward
from app.schemas import (
    SAMPLE_EVAL,
    SAMPLE_PAIRS,
    SAMPLE_PAIRS_EVAL,
    SAMPLE_TRAIN,
    RunSpec,
    default_eval,
    is_sample_dataset,
)

LINE_FIELDS = ("regression_prompts",)  # lists of free text: a textarea, one item a line
JSON_FIELDS = ("rewards",)  # lists of objects: a textarea of JSON (static/js/rewards_editor.js edits it as a table)

# What the form proposes for the bundled sample task, measured to teach the tiny model the task in a few
# minutes on a CPU (bench/accuracy.py). RunSpec's own defaults are for real models and stay as they are.
SAMPLE_TASK_RECIPE: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "learning_rate": 3e-3,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.05,
    "max_steps": 400,
    "per_device_train_batch_size": 16,
}
# DPO on the sample's pairs, continuing an SFT run of the sample (the preset below), as measured with stock TRL
# from a 200-step SFT adapter: preference accuracy stays at 1.0 (SFT already reaches it on these pairs) while the
# margin widens, and exact match moves 76% -> 72%; 1e-4 cost 10 points of it, 5e-4 32. bench/preference.py
# records the recipe through the engine.
PREFERENCE_SAMPLE_RECIPE: dict[str, Any] = {
    "learning_rate": 3e-5,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.05,
    "beta": 0.1,
    "max_steps": 100,
    "per_device_train_batch_size": 8,
}
# GRPO on the SFT sample, continuing an SFT run of it (the preset below): rewarded for the fields it gets right and
# for an exact answer. Calibrated by bench/grpo.py from the sample's SFT recipe cut to 150 steps (about half the
# answers exact): 8 prompts a step of 8 completions each at temperature 0.5 (the answers are 39-50 tokens), a
# constant lr 5e-4 and KL 0.04 to the SFT policy; 4 prompts a step, or lr 3e-4 and 1e-3, stayed flat or drifted.
GRPO_SAMPLE_RECIPE: dict[str, Any] = {
    "learning_rate": 5e-4,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "num_generations": 8,
    "per_device_train_batch_size": 64,
    "max_completion_length": 96,
    "eval_max_new_tokens": 96,  # the task evaluation's greedy answers then serve the reward evaluation too
    "temperature": 0.5,
    "beta": 0.04,
    "max_steps": 120,
}
# Each bundled training file: the objective its recipe is for, and the recipe.
SAMPLE_RECIPES: dict[Path, tuple[str, dict[str, Any]]] = {
    SAMPLE_TRAIN: ("sft", SAMPLE_TASK_RECIPE),
    SAMPLE_PAIRS: ("dpo", PREFERENCE_SAMPLE_RECIPE),
}
FOLLOWING = tuple(dict.fromkeys(name for _, recipe in SAMPLE_RECIPES.values() for name in recipe))

# Starting points offered above the form. A preset sets only the fields it names: the dataset, its eval
# data, the regression prompts and everything else stay as they are in the form unless it names them.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "qlora": ("QLoRA (default)", {"method": "qlora", "quantization": "auto"}),
    "lora": ("LoRA", {"method": "lora", "quantization": "none"}),
    "smoke": (
        "Quick smoke test",
        {"max_steps": 5, "per_device_train_batch_size": 2, "max_seq_length": 64, "save_steps": 0, "task_eval_rows": 5},
    ),
    "dpo_sample": (
        "DPO on the sample, continued from an SFT run",
        {
            "objective": "dpo",
            "dataset": str(SAMPLE_PAIRS),
            "eval_dataset": str(SAMPLE_PAIRS_EVAL),
            "eval_split": 0.0,
            **PREFERENCE_SAMPLE_RECIPE,
        },
    ),
    "grpo_sample": (
        "GRPO on the sample, continued from an SFT run",
        {
            "objective": "grpo",
            "dataset": str(SAMPLE_TRAIN),
            "eval_dataset": str(SAMPLE_EVAL),
            "eval_split": 0.0,
            "rewards": [{"function": "json_fields", "weight": 1.0}, {"function": "exact", "weight": 1.0}],
            "loss_type": "dapo",
            **GRPO_SAMPLE_RECIPE,
        },
    ),
}
# What a preset leaves to the user, said when it is applied.
PRESET_NOTES: dict[str, str] = {
    "dpo_sample": "Now choose the run to continue in “Continue from run” (init_from_run): a succeeded SFT run of "
    "the sample on the same base model, e.g. one with the sample's recipe. Its adapter is where DPO starts, and "
    "the reference it is compared with.",
    "grpo_sample": "Now choose the run to continue in “Continue from run” (init_from_run): a succeeded SFT run of "
    "the sample on the same base model, e.g. the sample's recipe cut to 150 steps (about half its answers exact, "
    "so there is room to gain). GRPO starts from its adapter, keeps near it (beta), and the rewards (the share of "
    "JSON fields right, and an exact answer) compare what it writes with the sample's answers.",
}


def display(value: Any, name: str = "") -> Any:
    """A value as a form field holds it."""
    if name in JSON_FIELDS and isinstance(value, list):
        return json_text(value)
    if isinstance(value, list) and name in LINE_FIELDS:
        return "\n".join(str(item) for item in value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, Enum):
        return value.value
    return value


def json_text(items: list[Any]) -> str:
    """A list of objects as the form's JSON textarea holds it: one object a line, without the parameters left at
    their defaults (a stored reward holds every parameter, empty where its function takes none)."""
    dumped = [_shown_reward(item.model_dump() if isinstance(item, BaseModel) else item) for item in items]
    lines = ",\n  ".join(json.dumps(item, ensure_ascii=False) for item in dumped)
    return f"[\n  {lines}\n]" if dumped else "[]"


def _shown_reward(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    kept = ("function", "weight")
    return {k: v for k, v in item.items() if k in kept or k not in _REWARD_DEFAULTS or v != _REWARD_DEFAULTS[k]}


_REWARD_DEFAULTS = {name: info.get_default(call_default_factory=True) for name, info in Reward.model_fields.items()}


def sample_recipe(dataset: str) -> tuple[str, dict[str, Any]]:
    """(the objective, the recipe) of a bundled training file; ("", {}) for any other file."""
    for path, recipe in SAMPLE_RECIPES.items():
        if is_sample_dataset(dataset, path):
            return recipe
    return "", {}


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The defaults that follow the dataset (here and in static/js/presets.js): the eval data that goes with it,
    and the schedule: a bundled sample's recipe for that sample, RunSpec's own for any other file."""
    own = RunSpec.model_construct().model_dump()
    return {name: own[name] for name in FOLLOWING} | default_eval(dataset) | sample_recipe(dataset)[1]


def default_dataset(chosen: Objective) -> str:
    """The first bundled training file the objective trains on; RunSpec's default where none is there."""
    for path in SAMPLE_RECIPES:
        if path.is_file() and first_row_shape(path) in chosen.shapes:
            return str(path)
    return str(RunSpec.model_construct().dataset)


def form_defaults(dataset: str | None = None, objective: str | None = None) -> dict[str, Any]:
    """What a new form holds: RunSpec's defaults, with those that follow the dataset (dataset_defaults), the
    objective's own defaults for shared fields (Objective.spec_defaults: GRPO's loss_type and beta), and its
    proposals (a learning rate) where the dataset's recipe is not for that objective."""
    defaults = RunSpec.model_construct().model_dump()
    chosen = REGISTRY.get(objective or "", REGISTRY[defaults["objective"]])
    dataset = dataset or (defaults["dataset"] if chosen.name == defaults["objective"] else default_dataset(chosen))
    chosen_values = {"dataset": dataset, "objective": chosen.name}
    return defaults | chosen_values | dataset_defaults(dataset) | proposals(chosen, dataset)


def proposals(chosen: Objective, dataset: str) -> dict[str, Any]:
    """What the objective proposes over the dataset's defaults (here and in static/js/presets.js): its own defaults
    for shared fields, then the dataset's recipe when that recipe is for this objective, else its proposals."""
    recipe_for, recipe = sample_recipe(dataset)
    return chosen.spec_defaults | (recipe if recipe_for == chosen.name else chosen.defaults)


def preset_values() -> dict[str, dict[str, Any]]:
    """Every preset as the form values it sets."""
    return {key: {k: display(v, k) for k, v in values.items()} for key, (_, values) in PRESETS.items()}


def dataset_rule() -> dict[str, Any]:
    """How the fields that follow the dataset change with it (static/js/presets.js): the values for each bundled
    sample and for any other file; a field holding none of them was set by the user and stays."""

    def shown(dataset: str) -> dict[str, Any]:
        return {name: display(value, name) for name, value in dataset_defaults(dataset).items()}

    own = RunSpec.model_construct().model_dump()
    proposed = dict.fromkeys(name for o in REGISTRY.values() for name in (*o.spec_defaults, *o.defaults))

    return {
        "samples": {str(path): shown(str(path)) for path in SAMPLE_RECIPES},
        "other": shown(""),
        # A bundled dataset follows the objective too: choosing dpo over the SFT sample takes the sample's pairs.
        "objective_datasets": {name: default_dataset(objective) for name, objective in REGISTRY.items()},
        # Which objective each bundled file's recipe is for: the objective's proposals give way to it there.
        "recipe_objectives": {str(path): recipe_for for path, (recipe_for, _) in SAMPLE_RECIPES.items()},
        # RunSpec's defaults of the fields an objective proposes a value for, where no objective or dataset does.
        "spec": {name: display(own[name], name) for name in proposed},
    }
