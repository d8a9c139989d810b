"""What the new-run form proposes: its defaults (RunSpec's, with those that follow the dataset and the objective),
the presets above it, and the bundled samples' recipes. static/js/presets.js applies the same rules in the page."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from app.dataset_shapes import first_row_shape
from app.objectives import REGISTRY, Objective
from app.schemas import SAMPLE_PAIRS, SAMPLE_PAIRS_EVAL, SAMPLE_TRAIN, RunSpec, default_eval, is_sample_dataset

LINE_FIELDS = ("regression_prompts",)  # lists of free text: a textarea, one item a line

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
}
# What a preset leaves to the user, said when it is applied.
PRESET_NOTES: dict[str, str] = {
    "dpo_sample": "Now choose the run to continue in “Continue from run” (init_from_run): a succeeded SFT run of "
    "the sample on the same base model, e.g. one with the sample's recipe. Its adapter is where DPO starts, and "
    "the reference it is compared with.",
}


def display(value: Any, name: str = "") -> Any:
    """A value as a form field holds it."""
    if isinstance(value, list) and name in LINE_FIELDS:
        return "\n".join(str(item) for item in value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, Enum):
        return value.value
    return value


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
    """What a new form holds: RunSpec's defaults, with those that follow the dataset (dataset_defaults) and the
    objective's proposals (a learning rate, beta) where the dataset's recipe is not for that objective."""
    defaults = RunSpec.model_construct().model_dump()
    chosen = REGISTRY.get(objective or "", REGISTRY[defaults["objective"]])
    dataset = dataset or (defaults["dataset"] if chosen.name == defaults["objective"] else default_dataset(chosen))
    proposed = {} if sample_recipe(dataset)[0] == chosen.name else chosen.defaults
    return defaults | {"dataset": dataset, "objective": chosen.name} | dataset_defaults(dataset) | proposed


def preset_values() -> dict[str, dict[str, Any]]:
    """Every preset as the form values it sets."""
    return {key: {k: display(v, k) for k, v in values.items()} for key, (_, values) in PRESETS.items()}


def dataset_rule() -> dict[str, Any]:
    """How the fields that follow the dataset change with it (static/js/presets.js): the values for each bundled
    sample and for any other file; a field holding none of them was set by the user and stays."""

    def shown(dataset: str) -> dict[str, Any]:
        return {name: display(value, name) for name, value in dataset_defaults(dataset).items()}

    return {
        "samples": {str(path): shown(str(path)) for path in SAMPLE_RECIPES},
        "other": shown(""),
        # A bundled dataset follows the objective too: choosing dpo over the SFT sample takes the sample's pairs.
        "objective_datasets": {name: default_dataset(objective) for name, objective in REGISTRY.items()},
    }
