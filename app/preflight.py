"""The pre-flight check of a run's inputs: what RunSpec's stored shape cannot know, because it is on disk.

RunSpec (app.schemas) is the stored shape and stays pure, so a stored run always reads back. Whether its base
model and datasets exist, lie under the allowed roots and fit together is checked here: at submit (the web,
the CLI), and again when a worker places or claims the run, since files can go while a run waits; a failure
there ends the run with its reason. Local paths come back resolved, so the stored spec names absolute paths.

Where the roots are enforced (every web request and every worker task; not `loradeck train` on a user's own
files), a path outside them is refused before it is looked at, so a refusal never tells whether it exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import Settings
from app.dataset_shapes import SHAPE_NAMES, first_row_shape
from app.errors import InvalidInput, field_error
from app.paths import dataset_outside, inside, model_outside
from app.peft_defaults import IA3_DEFAULT_MODEL_TYPES, ia3_feedforward_refusal, model_type
from app.schemas import Method, RunSpec, is_hub_id, refuse_hidden_characters

INPUT_FIELDS = ("base_model", "dataset", "eval_dataset")


def hidden_characters(field: str, value: str) -> str | None:
    """Why a path or id cannot be looked at: a NUL byte (the OS refuses it) or a character that hides what it
    says. None when it can."""
    try:
        refuse_hidden_characters(field, value)
    except ValueError as exc:
        return str(exc)
    return None


def base_model_problem(value: str, settings: Settings, *, enforce_roots: bool) -> tuple[str, str | None]:
    """(the value to store: a resolved directory or the hub id, why it cannot be used or None)."""
    if not value:
        return value, "base_model is empty: give a local model directory or a hub id like org/name"
    if problem := hidden_characters("base_model", value):
        return value, problem
    path = Path(value).expanduser()
    hub_id = is_hub_id(value)
    neither = f"base_model: {value} is neither a local model directory nor a hub id (org/name)"
    if enforce_roots and not inside(path, settings.allowed_model_roots):
        if hub_id:
            return value, None
        if not value.startswith(("/", ".", "~")) and "/" not in value:
            return value, neither
        return value, model_outside(value, settings)
    if path.is_dir():
        if not (path / "config.json").is_file():
            return value, f"base_model: {value} is a directory without config.json"
        return str(path.resolve()), None
    return value, None if hub_id else neither


def dataset_problem(field: str, value: str, settings: Settings, *, enforce_roots: bool) -> tuple[str, str | None]:
    """(the resolved path, why the file cannot be used or None); an empty eval_dataset is no eval file."""
    if not value and field == "eval_dataset":
        return value, None
    if problem := hidden_characters(field, value):
        return value, problem
    path = Path(value).expanduser()
    # The roots first: whether a file outside them exists is nobody's business.
    if enforce_roots and not inside(path, settings.allowed_dataset_roots):
        return value, dataset_outside(field, value, settings)
    if not path.is_file():
        return value, f"{field}: no file at {value}"
    return str(path.resolve()), None


def input_problems(
    values: Mapping[str, Any], settings: Settings, *, enforce_roots: bool, fields: Iterable[str] = INPUT_FIELDS
) -> tuple[dict[str, str], dict[str, str]]:
    """(resolved values where they differ from the given ones, field -> problem) for each input field of `values`
    given as a string."""
    resolved: dict[str, str] = {}
    problems: dict[str, str] = {}
    for field in fields:
        value = values.get(field)
        if not isinstance(value, str):
            continue
        if field == "base_model":
            path, problem = base_model_problem(value.strip(), settings, enforce_roots=enforce_roots)
        else:
            path, problem = dataset_problem(field, value.strip(), settings, enforce_roots=enforce_roots)
        if problem:
            problems[field] = problem
        elif path != value:  # only what changed: a spec copied with it counts it as set (with_default_eval)
            resolved[field] = path
    return resolved, problems


def rule_problems(spec: RunSpec) -> list[str]:
    """Rules between the inputs (their files readable): eval rows shaped like the training rows; (IA)³ on a
    model whose feed-forward layers PEFT knows, or named."""
    problems = []
    if spec.eval_dataset:
        train, held_out = first_row_shape(spec.dataset), first_row_shape(spec.eval_dataset)
        if train and held_out and train != held_out:
            problems.append(
                f"eval_dataset: {Path(spec.eval_dataset).name} holds {SHAPE_NAMES[held_out]} rows but dataset "
                f"{Path(spec.dataset).name} holds {SHAPE_NAMES[train]} rows; give an eval file of the same "
                "shape, or use eval_split to hold out part of the dataset"
            )
    # PEFT refuses (IA)³ without feedforward_modules where it has no defaults (Phi-3): refuse it at submit, not
    # at the worker. A hub id's config is not read here; the worker refuses it the same way.
    kind = model_type(spec.base_model) if spec.method == Method.ia3 and not spec.feedforward_modules else None
    if kind is not None and kind not in IA3_DEFAULT_MODEL_TYPES:
        problems.append(ia3_feedforward_refusal(kind))
    return problems


def check_inputs(
    spec: RunSpec, settings: Settings, *, enforce_roots: bool = True, fields: Iterable[str] = INPUT_FIELDS
) -> RunSpec:
    """The spec with its local paths resolved; InvalidInput naming each input that cannot be used now.
    `fields` narrows the check to what a task reads (a merge or the playground: the base model)."""
    fields = tuple(fields)
    resolved, problems = input_problems(spec.model_dump(), settings, enforce_roots=enforce_roots, fields=fields)
    if problems:
        raise InvalidInput.fields(problems)
    spec = spec.model_copy(update=resolved)
    if set(INPUT_FIELDS) <= set(fields) and (rules := rule_problems(spec)):
        raise InvalidInput(errors=[field_error("", problem) for problem in rules])
    return spec


def stored_spec(raw_spec: Any) -> RunSpec:
    """A stored spec in its shape: always readable back, unless a version whose fields differ stored it
    (InvalidInput then names the fields)."""
    try:
        return RunSpec.model_validate(raw_spec)
    except ValidationError as exc:
        raise InvalidInput(errors=[dict(error) for error in exc.errors(include_url=False)]) from None


def validate_spec(values: Any, settings: Settings, *, enforce_roots: bool = True) -> RunSpec:
    """A spec as a request or a spec file gives it, every problem found in one round trip: the shape
    (RunSpec), then the inputs on disk, even for a spec whose other fields are wrong."""
    try:
        spec = RunSpec.model_validate(values)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [dict(error) for error in exc.errors(include_url=False, include_context=False)]
        if isinstance(values, Mapping):
            failed = {error["loc"][0] for error in errors if error["loc"]}
            given = {name: values[name] for name in INPUT_FIELDS if name in values and name not in failed}
            _, problems = input_problems(given, settings, enforce_roots=enforce_roots)
            errors += [field_error(name, message) for name, message in problems.items()]
        raise InvalidInput(errors=errors) from None
    return check_inputs(spec, settings, enforce_roots=enforce_roots)
