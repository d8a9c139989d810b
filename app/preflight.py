"""The pre-flight check of a run's inputs: what RunSpec's stored shape cannot know, because it is on disk.

RunSpec (app.schemas) is the stored shape and stays pure, so a stored run always reads back. Whether its base
model and datasets exist, lie under the allowed roots and fit together is checked here: at submit (the web,
the CLI), and again when a worker places or claims the run, since files can go while a run waits; a failure
there ends the run with its reason. Local paths come back resolved, so the stored spec names absolute paths.

Where the roots are enforced (every web request and every worker task; not `loradeck train` on a user's own
files), a path outside them is refused before it is looked at, so a refusal never tells whether it exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import Settings
from app.dataset_shapes import SHAPE_NAMES, first_row_shape
from app.errors import InvalidInput, field_error
from app.objective_inputs import objective_problems, shape_problems_beside
from app.paths import dataset_outside, inside, model_outside
from app.peft_defaults import IA3_DEFAULT_MODEL_TYPES, ia3_feedforward_refusal, model_type
from app.schemas import Method, RunSpec, hidden_characters_problem, is_hub_id

INPUT_FIELDS = ("base_model", "dataset", "eval_dataset")
# What AutoTokenizer can build a tokenizer from: the fast tokenizer's file, a SentencePiece model, BPE or
# WordPiece vocabularies, or tiktoken's ranks. Without one, transformers fails late with a message about
# installing sentencepiece or tiktoken, whatever the directory lacks.
TOKENIZER_PATTERNS = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken")


def base_model_problem(value: str, settings: Settings, *, enforce_roots: bool) -> tuple[str, str | None]:
    """(the value to store: a resolved directory or the hub id, why it cannot be used or None)."""
    if not value:
        return value, "base_model is empty: give a local model directory or a hub id like org/name"
    if problem := hidden_characters_problem("base_model", value):
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


def model_files_missing(directory: Path) -> list[str]:
    """What a local model directory lacks to be trained or merged, each as a phrase: safetensors weights
    (loradeck loads no pickled weights), shards its index names, a tokenizer. Empty: nothing."""
    missing = []
    weights = sorted(path.name for path in directory.glob("*.safetensors"))
    index = directory / "model.safetensors.index.json"
    if not weights:
        pickled = sorted(path.name for path in directory.glob("*.bin") if path.name != "training_args.bin")
        found = f" (it holds {', '.join(pickled[:3])}, which loradeck does not load: save it as safetensors)"
        missing.append("has no safetensors weights" + (found if pickled else ""))
    elif index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            shards = set()
        if absent := sorted(str(shard) for shard in shards if not (directory / str(shard)).is_file()):
            missing.append(f"lacks {len(absent)} of its {len(shards)} weight shards ({', '.join(absent[:3])})")
    if not any(next(directory.glob(pattern), None) for pattern in TOKENIZER_PATTERNS):
        missing.append("has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with merges.txt)")
    return missing


def model_files_problem(directory: Path, value: str) -> str | None:
    """Why a local model directory cannot be trained or merged (model_files_missing), or None. Not asked of an
    estimate, which reads config.json alone."""
    missing = model_files_missing(directory)
    if not missing:
        return None
    return f"base_model: {value} {' and '.join(missing)}; choose a model directory that holds both"


def loadable_model_problem(resolved: str, value: str) -> str | None:
    """model_files_problem for a base model that resolved to a local directory (a hub id is the worker's to
    fetch)."""
    directory = Path(resolved)
    if directory.is_absolute() and directory.is_dir():
        return model_files_problem(directory, value)
    return None


def dataset_problem(field: str, value: str, settings: Settings, *, enforce_roots: bool) -> tuple[str, str | None]:
    """(the resolved path, why the file cannot be used or None); an empty eval_dataset is no eval file."""
    if not value and field == "eval_dataset":
        return value, None
    if problem := hidden_characters_problem(field, value):
        return value, problem
    path = Path(value).expanduser()
    # The roots first: whether a file outside them exists is nobody's business.
    if enforce_roots and not inside(path, settings.allowed_dataset_roots):
        return value, dataset_outside(field, value, settings)
    if not path.is_file():
        return value, f"{field}: no file at {value}"
    return str(path.resolve()), None


def datasets_outside_roots(values: Mapping[str, Any], settings: Settings) -> dict[str, str]:
    """Field -> refusal, for each dataset path of `values` outside the allowed roots: said before anything else
    about it (its suffix included), naming the roots, as for the base model."""
    outside = {}
    for field in ("dataset", "eval_dataset"):
        value = values.get(field)
        if (
            isinstance(value, str)
            and value.strip()
            and "\x00" not in value
            and not inside(Path(value.strip()), settings.allowed_dataset_roots)
        ):
            outside[field] = dataset_outside(field, value.strip(), settings)
    return outside


def input_problems(
    values: Mapping[str, Any],
    settings: Settings,
    *,
    enforce_roots: bool,
    fields: Iterable[str] = INPUT_FIELDS,
    loadable: bool = True,
) -> tuple[dict[str, str], dict[str, str]]:
    """(resolved values where they differ from the given ones, field -> problem) for each input field of `values`
    given as a string. `loadable`: a local base model must hold weights and a tokenizer (not for an estimate)."""
    resolved: dict[str, str] = {}
    problems: dict[str, str] = {}
    for field in fields:
        value = values.get(field)
        if not isinstance(value, str):
            continue
        if field == "base_model":
            path, problem = base_model_problem(value.strip(), settings, enforce_roots=enforce_roots)
            if not problem and loadable:
                problem = loadable_model_problem(path, value.strip())
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
    spec: RunSpec,
    settings: Settings,
    *,
    enforce_roots: bool = True,
    fields: Iterable[str] = INPUT_FIELDS,
    loadable: bool = True,
) -> RunSpec:
    """The spec with its local paths resolved; InvalidInput naming each input that cannot be used now.
    `fields` narrows the check to what a task reads (a merge or the playground: the base model)."""
    fields = tuple(fields)
    values = spec.model_dump()
    resolved, problems = input_problems(values, settings, enforce_roots=enforce_roots, fields=fields, loadable=loadable)
    if problems:
        raise InvalidInput.fields(problems)
    spec = spec.model_copy(update=resolved)
    if not set(INPUT_FIELDS) <= set(fields):
        return spec
    # The objective's own: the datasets' row shapes, the run continued (whose adapter's shape the spec takes).
    taken, refusals = objective_problems(spec, settings)
    if refusals:
        raise InvalidInput.fields(refusals)
    spec = spec.model_copy(update=taken)
    if rules := rule_problems(spec):
        raise InvalidInput(errors=[field_error("", problem) for problem in rules])
    return spec


def stored_spec(raw_spec: Any) -> RunSpec:
    """A stored spec in its shape: always readable back, unless a version whose fields differ stored it
    (InvalidInput then names the fields)."""
    try:
        return RunSpec.model_validate(raw_spec)
    except ValidationError as exc:
        raise InvalidInput(errors=[dict(error) for error in exc.errors(include_url=False)]) from None


def validate_spec(values: Any, settings: Settings, *, enforce_roots: bool = True, loadable: bool = True) -> RunSpec:
    """A spec as a request or a spec file gives it, every problem found in one round trip: the shape
    (RunSpec), then the inputs on disk, even for a spec whose other fields are wrong. `loadable`: as for
    input_problems (an estimate reads config.json alone)."""
    try:
        spec = RunSpec.model_validate(values)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [dict(error) for error in exc.errors(include_url=False, include_context=False)]
        if isinstance(values, Mapping):
            if enforce_roots:  # a path outside the roots is refused as such, whatever its suffix
                outside = datasets_outside_roots(values, settings)
                errors = [error for error in errors if not (error["loc"] and error["loc"][0] in outside)]
            failed = {error["loc"][0] for error in errors if error["loc"]}
            given = {name: values[name] for name in INPUT_FIELDS if name in values and name not in failed}
            resolved, problems = input_problems(given, settings, enforce_roots=enforce_roots, loadable=loadable)
            problems |= shape_problems_beside(values, resolved, failed | set(problems), settings)
            errors += [field_error(name, message) for name, message in problems.items()]
        raise InvalidInput(errors=errors) from None
    return check_inputs(spec, settings, enforce_roots=enforce_roots, loadable=loadable)


def spec_setting_aside(values: Mapping[str, Any], failed: Iterable[str]) -> RunSpec | None:
    """The spec that `values` make once the fields in `failed` are set aside (to their defaults), and those a
    rule between fields then names: what the rest of a refused spec holds, so that checks that need a whole
    spec (the module names a model lacks) answer in the same round trip. None when none can be made."""
    trial = {name: value for name, value in values.items() if name not in set(failed)}
    for _ in range(8):  # each pass sets aside at least one more field
        try:
            return RunSpec.model_validate(trial)
        except ValidationError as exc:
            named: set[str] = set()
            for error in exc.errors(include_url=False):
                if error["loc"]:
                    named.add(str(error["loc"][0]))
                else:  # a rule between fields names them before its colon ("use_dora, use_rslora: ...")
                    head = str(error["msg"]).removeprefix("Value error, ").partition(":")[0]
                    named |= {name.strip() for name in head.split(",")}
            if not named & set(trial):
                return None
            trial = {name: value for name, value in trial.items() if name not in named}
    return None
