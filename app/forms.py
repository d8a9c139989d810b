"""The new-run form, rendered from RunSpec itself: labels, help text, widgets and limits."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError
from starlette.datastructures import FormData

from app.schemas import SAMPLE_TRAIN, RunSpec, default_eval

BASIC_FIELDS = (
    "name",
    "base_model",
    "dataset",
    "method",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "learning_rate",
    "max_steps",
    "per_device_train_batch_size",
)


# Starting points offered above the form. A preset sets only the fields it names: the dataset, its eval
# data, the regression prompts and everything else stay as they are in the form.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "qlora": ("QLoRA (default)", {"method": "qlora", "quantization": "auto"}),
    "lora": ("LoRA", {"method": "lora", "quantization": "none"}),
    "smoke": (
        "Quick smoke test",
        {"max_steps": 5, "per_device_train_batch_size": 2, "max_seq_length": 64, "save_steps": 0, "task_eval_rows": 5},
    ),
}

# What the form proposes for the bundled sample task, measured to teach the tiny model the task in a few
# minutes on a CPU (bench/accuracy.py). RunSpec's own defaults are for real models and stay as they are.
SAMPLE_TASK_RECIPE: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "learning_rate": 2e-3,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.05,
    "max_steps": 300,
    "per_device_train_batch_size": 16,
}


def form_defaults(dataset: str | None = None) -> dict[str, Any]:
    """What a new form holds: RunSpec's defaults, the eval data that goes with the dataset, and for the
    bundled sample task the recipe that teaches it quickly."""
    defaults = RunSpec.model_construct().model_dump()
    dataset = dataset or defaults["dataset"]
    defaults |= {"dataset": dataset} | default_eval(dataset)
    if Path(dataset).resolve() == SAMPLE_TRAIN.resolve():
        defaults |= SAMPLE_TASK_RECIPE
    return defaults


def preset_values() -> dict[str, dict[str, Any]]:
    """Every preset as the form values it sets."""
    return {key: {k: _display(v, k) for k, v in values.items()} for key, (_, values) in PRESETS.items()}


@dataclass
class FormField:
    name: str
    label: str
    help: str
    widget: str  # text, number, select, checkbox, lines
    value: Any
    choices: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _choices(annotation: Any) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    if typing.get_origin(annotation) is Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return []


LINE_FIELDS = ("regression_prompts",)  # lists of free text: a textarea, one item a line


def _display(value: Any, name: str = "") -> Any:
    if isinstance(value, list) and name in LINE_FIELDS:
        return "\n".join(str(item) for item in value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, Enum):
        return value.value
    return value


def build_fields(values: dict[str, Any], errors: dict[str, str] | None = None) -> list[FormField]:
    """Every RunSpec field as a form field, basic ones first, holding the given (or default) values."""
    errors = errors or {}
    defaults = form_defaults(values.get("dataset"))
    fields = []
    ordered = list(BASIC_FIELDS) + [name for name in RunSpec.model_fields if name not in BASIC_FIELDS]
    for name in ordered:
        info = RunSpec.model_fields[name]
        annotation = info.annotation
        choices = _choices(annotation)
        attrs: dict[str, Any] = {}
        if choices:
            widget = "select"
        elif annotation is bool:
            widget = "checkbox"
        elif annotation in (int, float):
            widget = "number"
            attrs["step"] = "1" if annotation is int else "any"
            for meta in info.metadata:
                if isinstance(meta, Ge | Gt):
                    attrs["min"] = meta.ge if isinstance(meta, Ge) else meta.gt
                if isinstance(meta, Le | Lt) and isinstance(meta, Le):
                    attrs["max"] = meta.le
        elif name in LINE_FIELDS:
            widget = "lines"
        else:
            widget = "text"
        value = values.get(name, defaults.get(name))
        fields.append(
            FormField(
                name=name,
                label=name,
                help=info.description or "",
                widget=widget,
                value=_display(value, name),
                choices=choices,
                attrs=attrs,
                error=errors.get(name),
            )
        )
    return fields


def form_context(values: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    """What the form templates need: the basic and the advanced fields, and the errors."""
    fields = build_fields(values, errors)
    return {
        "basic": fields[: len(BASIC_FIELDS)],
        "advanced": fields[len(BASIC_FIELDS) :],
        "errors": errors or {},
        "presets": [(key, label) for key, (label, _) in PRESETS.items()],
        "preset_values": preset_values(),
        # How the eval fields follow the dataset field when it changes (static/js/presets.js).
        "eval_rule": {
            "sample_train": str(SAMPLE_TRAIN),
            "sample": default_eval(str(SAMPLE_TRAIN)),
            "other": default_eval(""),
        },
    }


def form_values(form: FormData) -> dict[str, Any]:
    """The submitted values. For a checkbox the browser sends a hidden "false" then "true" when checked."""
    values: dict[str, Any] = {}
    for name in RunSpec.model_fields:
        submitted = form.getlist(name)
        if submitted:
            values[name] = submitted[-1]
    return values


def validation_errors(exc: ValidationError) -> dict[str, str]:
    """Field name -> a message a person can act on."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "form"
        message = str(error["msg"]).removeprefix("Value error, ")
        errors.setdefault(name, message)
    return errors
