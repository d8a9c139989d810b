"""The new-run form, rendered from RunSpec itself: labels, help text, widgets and limits."""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError
from starlette.datastructures import FormData

from app.config import Settings
from app.objective_inputs import objective_problems, shape_problems_beside
from app.objectives import objectives, objectives_using
from app.preflight import INPUT_FIELDS, datasets_outside_roots, input_problems, rule_problems
from app.schemas import FAST_PATH_FIELDS, Method, RunSpec
from app.web.form_presets import (
    JSON_FIELDS,
    LINE_FIELDS,
    PRESET_NOTES,
    PRESETS,
    dataset_rule,
    form_defaults,
    preset_values,
)
from app.web.form_presets import display as _display
from app.web.json_fields import item_message, json_problem, reward_rule

# The form's sections, in order, each with its fields: every RunSpec field is in exactly one. The objective's
# section holds the fields each objective of the registry declares (app.objectives), but those placed elsewhere.
_DATA = (
    "data",
    "Model and data",
    (
        "name",
        "base_model",
        "dataset",
        "chat_template",
        "train_on_prompt",
        "max_seq_length",
        "packing",
    ),
)
_REST: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("method", "Method", (
        "method", "target_modules", "modules_to_save", "feedforward_modules", "num_virtual_tokens",
        "prompt_tuning_init_text",
    )),
    ("lora", "LoRA", ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "bias")),
    ("quantization", "Quantization", (
        "quantization", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
    )),
    ("schedule", "Schedule", (
        "learning_rate", "lr_scheduler_type", "warmup_ratio", "max_steps", "num_train_epochs",
        "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "weight_decay", "max_grad_norm",
        "precision", "logging_steps", "seed",
    )),
    # The throughput switches (packing sits with the data it packs): auto is resolved on the worker, and the run
    # page says what each became and why (worker.engine.fastpaths).
    ("speed", "Speed", ("micro_batch_size", "gradient_checkpointing", "liger_kernel", "torch_compile")),
    ("evaluation", "Evaluation", (
        "eval_dataset", "eval_split", "eval_steps", "early_stopping_patience", "task_eval_rows",
        "regression_prompts", "eval_max_new_tokens",
    )),
    ("placement", "Checkpoints and placement", ("save_steps", "save_total_limit", "worker", "gpus")),
)  # fmt: skip
_PLACED = {name for _, _, names in (_DATA, *_REST) for name in names}
OBJECTIVE_FIELDS = tuple(dict.fromkeys(f for o in objectives() for f in o.fields if f not in _PLACED))
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    _DATA,
    ("objective", "Objective", ("objective", "init_from_run", *OBJECTIVE_FIELDS)),
    *_REST,
)

# What a person reads; the RunSpec name stays beside it in small monospace.
LABELS: dict[str, str] = {
    "name": "Run name", "base_model": "Base model", "dataset": "Training data", "chat_template": "Chat template",
    "train_on_prompt": "Train on prompts too", "max_seq_length": "Max sequence length", "packing": "Pack rows",
    "method": "Method", "target_modules": "Target modules", "modules_to_save": "Modules trained in full",
    "feedforward_modules": "Feed-forward modules", "num_virtual_tokens": "Virtual tokens",
    "prompt_tuning_init_text": "Initial prompt text", "r": "Rank", "lora_alpha": "Alpha",
    "lora_dropout": "Dropout", "use_dora": "DoRA", "use_rslora": "Rank-stabilised LoRA", "bias": "Train biases",
    "quantization": "Base quantization", "bnb_4bit_quant_type": "4-bit type",
    "bnb_4bit_use_double_quant": "Double quantization", "bnb_4bit_compute_dtype": "4-bit compute dtype",
    "learning_rate": "Learning rate", "lr_scheduler_type": "LR schedule", "warmup_ratio": "Warmup share",
    "max_steps": "Max steps", "num_train_epochs": "Epochs", "per_device_train_batch_size": "Batch size per device",
    "gradient_accumulation_steps": "Gradient accumulation",
    "micro_batch_size": "Examples a pass", "optim": "Optimizer", "weight_decay": "Weight decay",
    "max_grad_norm": "Gradient clipping", "gradient_checkpointing": "Gradient checkpointing",
    "liger_kernel": "Liger fused kernels", "torch_compile": "torch.compile",
    "precision": "Precision", "logging_steps": "Log every", "seed": "Seed", "eval_dataset": "Eval data",
    "eval_split": "Held-out share", "eval_steps": "Evaluate every", "early_stopping_patience": "Early-stop patience",
    "task_eval_rows": "Eval rows answered", "regression_prompts": "Regression prompts",
    "eval_max_new_tokens": "Answer length", "save_steps": "Checkpoint every", "save_total_limit": "Checkpoints kept",
    "worker": "Worker", "gpus": "GPUs", "objective": "Objective", "init_from_run": "Continue from run",
    "beta": "Beta", "loss_type": "Loss", "label_smoothing": "Label smoothing",
    "desirable_weight": "Good-answer weight", "undesirable_weight": "Bad-answer weight",
    "rewards": "Rewards", "num_generations": "Completions per prompt",
    "max_completion_length": "Max completion length", "temperature": "Sampling temperature",
    "epsilon": "Clip range (epsilon)",
}  # fmt: skip

# Fields that apply only to some methods, or to a base loaded in some quantization: hidden (and not submitted)
# otherwise. A field applies when the method is one of its methods or the quantization one of its
# quantizations; the page gets both lists (data-methods, data-quantizations) and static/js/run_form.js reads
# them, so the rule is written here alone.
LORA_ONLY = ("lora", "qlora")
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    **{name: LORA_ONLY for name in ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "bias")},
    "target_modules": ("lora", "qlora", "ia3"),
    "feedforward_modules": ("ia3",),
    "num_virtual_tokens": ("prompt_tuning",),
    "prompt_tuning_init_text": ("prompt_tuning",),
    # bitsandbytes' 4-bit options: only when the base is loaded in 4 bits (qlora, or quantization 4bit).
    **dict.fromkeys(("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"), ("qlora",)),
}
QUANTIZATION_FIELDS: dict[str, tuple[str, ...]] = dict.fromkeys(
    ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"), ("4bit",)
)

assert sorted(n for _, _, names in SECTIONS for n in names) == sorted(RunSpec.model_fields), "a field lacks a section"


def field_applies(name: str, method: str, quantization: str, objective: str = "sft") -> bool:
    """Whether a field means anything for this objective (app.objectives), method and quantization."""
    if (objectives := objectives_using(name)) and objective not in objectives:
        return False
    methods, quantizations = METHOD_FIELDS.get(name, ()), QUANTIZATION_FIELDS.get(name, ())
    if not methods and not quantizations:
        return True
    return method in methods or quantization in quantizations


@dataclass
class FormField:
    name: str
    label: str
    help: str
    widget: str  # text, number, select, checkbox, lines, rewards (JSON, edited as a table by rewards_editor.js)
    value: Any
    choices: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    methods: tuple[str, ...] = ()  # the methods it applies to (or the quantizations below); both empty: always
    quantizations: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ()  # the objectives it applies to; empty: all
    applies: bool = True
    choice_labels: dict[str, str] = field(default_factory=dict)  # what a choice reads as, when not its value
    # For a choice some objectives refuse (method): the objectives that take it.
    choice_objectives: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class FormSection:
    key: str
    title: str
    fields: list[FormField]

    @property
    def applies(self) -> bool:
        return any(f.applies for f in self.fields)


def _choices(annotation: Any) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    if typing.get_origin(annotation) is Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return []


def build_fields(values: dict[str, Any], errors: dict[str, str] | None = None) -> list[FormField]:
    """Every RunSpec field as a form field, section by section, holding the given (or default) values."""
    errors = errors or {}
    defaults = form_defaults(values.get("dataset"), values.get("objective"))
    method = str(_display(values.get("method", defaults["method"])))
    quantization = str(values.get("quantization", defaults["quantization"]))
    chosen = str(values.get("objective", defaults["objective"]))
    fields = []
    ordered = [name for _, _, names in SECTIONS for name in names]
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
        elif name in JSON_FIELDS:
            widget = name
        else:
            widget = "text"
        value = values.get(name, defaults.get(name))
        if name in FAST_PATH_FIELDS and isinstance(value, bool):  # a run stored before the switches had auto
            value = "on" if value else "off"
        fields.append(
            FormField(
                name=name,
                label=LABELS.get(name, name),
                help=info.description or "",
                widget=widget,
                value=_display(value, name),
                choices=choices,
                attrs=attrs,
                error=errors.get(name),
                methods=METHOD_FIELDS.get(name, ()),
                quantizations=QUANTIZATION_FIELDS.get(name, ()),
                objectives=objectives_using(name),
                applies=field_applies(name, method, quantization, chosen),
                **_choice_details(name),
            )
        )
    return fields


def _choice_details(name: str) -> dict[str, Any]:
    """The objective's choices read as the registry names them; a method, with the objectives that take it."""
    if name == "objective":
        return {"choice_labels": {o.name: f"{o.label}: {o.summary}" for o in objectives()}}
    if name == "method":
        return {"choice_objectives": {m: tuple(o.name for o in objectives() if m in o.methods) for m in Method}}
    if name in FAST_PATH_FIELDS:
        return {"choice_labels": {"auto": "auto (the worker decides; the run page says why)"}}
    if name == "loss_type":  # each objective's own losses (Objective.losses): DPO's pair losses, GRPO's
        losses = {loss for o in objectives() for loss in o.losses}
        return {"choice_objectives": {loss: tuple(o.name for o in objectives() if loss in o.losses) for loss in losses}}
    return {}


def objective_rule() -> dict[str, Any]:
    """What the page needs to follow the objective (static/js/run_form.js, presets.js): each one's dataset shapes,
    named; its own defaults for shared fields (GRPO's loss_type, beta) and its proposals (a learning rate), as the
    form shows them (app.web.form_presets.proposals)."""
    return {
        o.name: {
            "shapes": list(o.shapes),
            "needs": o.shapes_named(),
            "spec_defaults": {k: _display(v, k) for k, v in o.spec_defaults.items()},
            "defaults": {k: _display(v, k) for k, v in o.defaults.items()},
        }
        for o in objectives()
    }


def build_sections(values: dict[str, Any], errors: dict[str, str] | None = None) -> list[FormSection]:
    by_name = {f.name: f for f in build_fields(values, errors)}
    return [FormSection(key, title, [by_name[name] for name in names]) for key, title, names in SECTIONS]


def form_context(values: dict[str, Any], errors: dict[str, str] | None = None) -> dict[str, Any]:
    """What the form templates need: the sections with their fields, and the errors."""
    return {
        "sections": build_sections(values, errors),
        "errors": errors or {},
        "presets": [(key, label) for key, (label, _) in PRESETS.items()],
        "preset_values": preset_values(),
        "preset_notes": PRESET_NOTES,
        "dataset_rule": dataset_rule(),
        "objective_rule": objective_rule(),
        "reward_rule": reward_rule(),
        "form_objective": form_defaults(values.get("dataset"), str(values.get("objective", "")))["objective"],
    }


def form_values(form: FormData) -> dict[str, Any]:
    """The submitted values. For a checkbox the browser sends a hidden "false" then "true" when checked. A JSON
    field (rewards) is read into its list; text that does not read stays text (json_problem says why)."""
    values: dict[str, Any] = {}
    for name in RunSpec.model_fields:
        submitted = form.getlist(name)
        if submitted:
            values[name] = submitted[-1]
    for name in JSON_FIELDS:
        if isinstance(values.get(name), str) and json_problem(name, values[name]) is None:
            values[name] = json.loads(values[name])
    return values


# Field names too common as words to be read as a field inside a message.
_COMMON_WORDS = {"name", "r", "bias", "seed", "worker", "gpus", "optim", "precision", "dataset"}
_FIELD_WORD = re.compile(r"(?<![A-Za-z0-9_])([a-z][a-z0-9_]*)(?![A-Za-z0-9_])")


def fields_involved(name: str, message: str) -> list[str]:
    """The fields an error is about: its own, the ones its message starts with ("use_dora, use_rslora: ...")
    and every other field the message names (a cross-field rule names each side). An error inside a JSON field
    (a reward's pattern, its texts) is that field's alone, whatever words the user's pattern holds."""
    if name in JSON_FIELDS:
        return [name]
    head, _, rest = message.partition(":")
    named = [n.strip() for n in head.split(",")] if rest else []
    involved = [n for n in [name, *named] if n in RunSpec.model_fields]
    for word in _FIELD_WORD.findall(rest or message):
        if word in RunSpec.model_fields and word not in _COMMON_WORDS and word not in involved:
            involved.append(word)
    return involved or [name]


def check_form(values: dict[str, Any], settings: Settings) -> tuple[RunSpec | None, dict[str, str]]:
    """Validate the submitted values, finding every error in one go: pydantic checks the cross-field rules
    only once each field is valid, so each failing field is set aside (to its default) and the rest checked
    again, until nothing new turns up; then the inputs on disk (app.preflight), the same way. A cross-field
    error is listed under each field it names."""
    # A dataset path outside the roots is refused as such first, whatever its suffix (app.preflight).
    errors: dict[str, str] = datasets_outside_roots(values, settings)
    for name in JSON_FIELDS:  # text that form_values could not read as JSON
        if isinstance(values.get(name), str) and (problem := json_problem(name, values[name])):
            errors[name] = problem
    trial = {name: value for name, value in values.items() if name not in errors}
    spec: RunSpec | None = None
    for _ in range(8):
        try:
            spec = RunSpec.model_validate(trial)
        except ValidationError as exc:
            if not _set_aside(validation_errors(exc), errors, trial):
                break
            continue
        break
    given = {name: values[name] for name in INPUT_FIELDS if name in values and name not in errors}
    resolved, problems = input_problems(given, settings, enforce_roots=True)
    # A spec refused already is one with fields set aside (the objective maybe): its files' shapes are checked
    # against the objective given, the run it continues once the rest is right.
    refused = bool(errors) or spec is None
    if refused:
        problems |= shape_problems_beside(values, resolved, set(errors) | set(problems), settings)
    _set_aside(problems, errors, trial)
    if spec is not None and not problems:
        spec = spec.model_copy(update=resolved)
        # The objective's: the datasets' row shapes and the run continued, whose adapter's shape the spec takes.
        taken, refusals = ({}, {}) if refused else objective_problems(spec, settings)
        _set_aside(refusals, errors, trial)
        spec = spec.model_copy(update=taken)
        for problem in [] if refusals else rule_problems(spec):  # each names its fields, as a cross-field rule does
            _set_aside({"form": problem}, errors, trial)
    return (None, errors) if errors or spec is None else (spec, {})


def _set_aside(found: dict[str, str], errors: dict[str, str], trial: dict[str, Any]) -> bool:
    """Record each error under every field it involves and drop those fields from the trial; True when a
    field was dropped (so checking again may find more)."""
    progressed = False
    for name, message in found.items():
        for involved in fields_involved(name, message):
            errors.setdefault(involved, message)
            if involved in trial:
                trial.pop(involved)
                progressed = True
    return progressed


def validation_errors(exc: ValidationError) -> dict[str, str]:
    """Field name -> a message a person can act on."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "form"
        message = str(error["msg"]).removeprefix("Value error, ")
        if name in JSON_FIELDS:
            message = item_message(name, error["loc"][1:], message)
        errors.setdefault(name, message)
    return errors
