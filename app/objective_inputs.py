"""The pre-flight checks an objective adds (app.preflight runs them at submit and when a worker claims the run):
the datasets hold rows of a shape the objective trains on, and a run continued from another (`init_from_run`)
starts from a finished run's saved adapter on the same base model, whose shape it takes.

The adapter's shape (its method family, rank, alpha, modules...) is the starting run's: PEFT loads the saved
adapter as it was built, so a value given for the new run could only be ignored or fail late. It is resolved
into the stored spec at submit, as local paths are, so the run page and the worker read what is trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.config import Settings
from app.dataset_shapes import SHAPE_NAMES, first_row_shape
from app.models import Artifact, ArtifactKind, ArtifactStatus, Dataset, Run, RunStatus
from app.objectives import REGISTRY, objective, objectives_accepting
from app.paths import inside
from app.schemas import LORA_METHODS, Method, RunSpec

# What a saved adapter's shape is made of, by method family: the new run takes these from the run it continues.
ADAPTER_SHAPE_FIELDS = (
    "r", "lora_alpha", "target_modules", "use_dora", "use_rslora", "bias", "modules_to_save", "feedforward_modules",
    "num_virtual_tokens",
)  # fmt: skip
CONTINUABLE = (RunStatus.succeeded, RunStatus.stopped)
ALL_METHODS = tuple(str(method.value) for method in Method)


def method_family(method: str) -> str:
    """LoRA and QLoRA train the same adapter (QLoRA on a 4-bit base); (IA)³ and prompt tuning, each its own."""
    return "lora" if method in LORA_METHODS else method


def either(names: tuple[str, ...] | list[str], word: str = "or") -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


@contextmanager
def _session(session: Session | None) -> Iterator[Session]:
    if session is not None:
        yield session
        return
    from app.db import get_sessionmaker

    with get_sessionmaker()() as own:
        yield own


def dataset_shape(path: str, settings: Settings, session: Session | None = None) -> str | None:
    """The file's row shape: from its first row, else (Parquet, a long first row) as stored when it was uploaded."""
    shape = first_row_shape(path)
    if shape is not None or not inside(Path(path), [settings.datasets_dir]):
        return shape
    try:
        with _session(session) as s:
            return s.scalar(select(Dataset.shape).where(Dataset.path == str(path)))
    except SQLAlchemyError:  # no database to ask (a spec checked on its own): the worker's full read decides
        return None


def shape_problems(spec: RunSpec, settings: Settings, session: Session | None = None) -> dict[str, str]:
    """Field -> refusal for each dataset file whose rows the objective does not train on, naming the shape it needs."""
    chosen = objective(spec.objective)
    problems = {}
    for field in ("dataset", "eval_dataset"):
        value = getattr(spec, field)
        shape = dataset_shape(value, settings, session) if value else None
        if shape is None or shape not in SHAPE_NAMES or shape in chosen.shapes:
            continue
        others = objectives_accepting(shape)
        fix = f"choose a {chosen.shapes_named()} file" + (f", or objective {either(others)}" if others else "")
        problems[field] = (
            f"{field}: objective {chosen.name} trains on {chosen.shapes_named()} rows; {Path(value).name} has "
            f"{SHAPE_NAMES[shape]} rows: {fix}"
        )
    return problems


def shape_problems_beside(
    values: Mapping[str, Any], resolved: Mapping[str, str], failed: Iterable[str], settings: Settings
) -> dict[str, str]:
    """shape_problems for a spec refused for other reasons, so that a file of the wrong shape is said in the same
    answer: as long as the objective and the files themselves are fine."""
    chosen = values.get("objective", "sft")
    if not isinstance(chosen, str) or chosen not in REGISTRY or {"dataset", "eval_dataset"} & set(failed):
        return {}
    dataset, eval_dataset = (
        str(resolved.get(name, values.get(name, ""))).strip() for name in ("dataset", "eval_dataset")
    )
    probe = RunSpec.model_construct(objective=chosen, dataset=dataset, eval_dataset=eval_dataset)
    return shape_problems(probe, settings)


def starting_run(spec: RunSpec, session: Session | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(the adapter fields the spec takes from the run it continues, field -> refusal); nothing to take or refuse
    for a run with no init_from_run."""
    run_id = spec.init_from_run
    if not run_id:
        return {}, {}

    def refused(message: str) -> tuple[dict[str, Any], dict[str, str]]:
        return {}, {"init_from_run": f"init_from_run: {message}"}

    try:
        found = _finished_run_spec(run_id, session)
    except SQLAlchemyError as exc:  # `loradeck train` on a machine without the server's database
        return refused(f"the runs database cannot be read ({type(exc).__name__}), so run {run_id} cannot be found")
    if isinstance(found, str):
        return refused(found)
    try:
        start = RunSpec.model_validate(found)
    except ValidationError as exc:
        return refused(f"run {run_id}'s spec no longer reads ({exc.errors()[0]['msg']}); choose another run")
    if not same_model(start.base_model, spec.base_model):
        return refused(
            f"run {run_id} was trained on base model {start.base_model}; this run's base_model is {spec.base_model} "
            f"— choose a run on {spec.base_model} or change base_model"
        )
    family, wanted = method_family(start.method), method_family(spec.method)
    if family != wanted:
        of = {name: either([m for m in ALL_METHODS if method_family(m) == name]) for name in (family, wanted)}
        return refused(
            f"run {run_id} trained a {family} adapter, which a {wanted} run cannot continue: "
            f"set method {of[family]}, or choose a run of method {of[wanted]}"
        )
    taken = {name: getattr(start, name) for name in ADAPTER_SHAPE_FIELDS if getattr(start, name) != getattr(spec, name)}
    try:  # its adapter's shape must fit this run's other choices (the rules between fields)
        RunSpec.model_validate(spec.model_dump() | taken)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        return refused(f"run {run_id}'s adapter does not fit this run ({message}); choose another run")
    return taken, {}


def _finished_run_spec(run_id: str, session: Session | None) -> dict[str, Any] | str:
    """The stored spec of a run that can be continued, or why it cannot be."""
    with _session(session) as s:
        run = s.get(Run, run_id)
        if run is None:
            return f"no run with id {run_id}; choose a succeeded or stopped run (its id is on its page)"
        if run.status not in CONTINUABLE:
            return f"run {run_id} is {run.status}; continue from a succeeded or stopped run"
        adapter = s.scalar(
            select(Artifact.id)
            .where(Artifact.run_id == run_id, Artifact.kind == ArtifactKind.adapter)
            .where(Artifact.status == ArtifactStatus.ready)
        )
        if adapter is None:
            return f"run {run_id} has no saved adapter; continue from a run whose adapter is saved"
        return dict(run.spec)


def same_model(one: str, other: str) -> bool:
    """Whether two base_model values name one model: one hub id, or one directory by any path to it."""
    if one == other:
        return True
    try:
        return Path(one).is_absolute() and Path(one).resolve() == Path(other).resolve()
    except (OSError, ValueError):
        return False


def objective_problems(
    spec: RunSpec, settings: Settings, session: Session | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """(what the spec takes from the run it continues, field -> refusal): the datasets' shapes, then init_from_run."""
    problems = shape_problems(spec, settings, session)
    taken, refusals = starting_run(spec, session)
    return taken, problems | refusals
