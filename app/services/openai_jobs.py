"""OpenAI's fine-tuning jobs as loradeck runs: job `ftjob-<run id>` IS the run, created through the same service
as `POST /api/v1/runs` (so it queues to the worker and shows in the dashboard), with an OpenAIJob row keeping what
the request asked for. A run started in the dashboard has no such row and is a job all the same, described from
its spec.

Pause and resume are loradeck's stop (a checkpoint and the adapter saved; the run ends `stopped`, which a job
created here shows as `paused`) and resume from that checkpoint (the same run queued again: the id stays).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, InvalidInput, NotFound
from app.models import Dataset, OpenAIJob, Run, RunStatus
from app.objectives import REGISTRY
from app.openai_ids import base_id, parse_fine_tuned, resolve_base
from app.services import checkpoints, openai_auto, openai_files
from app.services import runs as runs_service
from app.services.openai_job_object import JOB_PREFIX, job_status
from app.services.openai_job_request import JobRequest, RequestProblem, parse_job_request

MAX_LIST = 100
# RunSpec fields a refusal of the run is about, by the request's parameter.
PARAMS = {"base_model": "model", "init_from_run": "model", "dataset": "training_file",
          "eval_dataset": "validation_file", "seed": "seed",
          "learning_rate": "hyperparameters.learning_rate_multiplier",
          "per_device_train_batch_size": "hyperparameters.batch_size", "max_steps": "hyperparameters.n_epochs",
          "beta": "method.dpo.hyperparameters.beta"}  # fmt: skip
FIELD = re.compile(r"^([a-z_]+): ")  # a RunSpec refusal names its field first


class JobRefused(InvalidInput):
    """A request the job cannot be made from; `param` names the request's field (OpenAI's error `param`)."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param


def get_job(*, session: Session, job: str) -> Run:
    run = session.get(Run, job.removeprefix(JOB_PREFIX)) if job.startswith(JOB_PREFIX) else None
    if run is None:
        raise NotFound(f"No such fine-tuning job: {job[:80]}")
    return run


# --- create


def create_job(*, session: Session, settings: Settings, body: Any) -> Run:
    """A run from OpenAI's job request: files resolved to datasets, `auto` hyperparameters chosen
    (app.services.openai_auto), queued through the runs service; the request kept beside it."""
    try:
        request = parse_job_request(body)
    except RequestProblem as exc:
        raise JobRefused(exc.param, str(exc)) from None
    base_model, source = _base(session, settings, request.model)
    training = _file(session, request.training_file, "training_file", request.method)
    assert training is not None  # a required field
    validation = _file(session, request.validation_file, "validation_file", request.method)
    if validation and validation.shape and training.shape and validation.shape != training.shape:
        raise JobRefused(
            "validation_file",
            f"{request.validation_file} holds {validation.shape} rows and {request.training_file} {training.shape} "
            "rows; give a validation file of the training file's shape",
        )
    recipe = openai_auto.choose(
        base_model=base_model, method=request.method, rows=training.rows or 0, asked=request.hyperparameters
    )
    spec: dict[str, Any] = {
        "name": f"job {request.suffix or base_id(base_model, settings)}",
        "base_model": base_model,
        "dataset": training.path,
        "eval_dataset": validation.path if validation else "",
        "objective": "dpo" if request.method == "dpo" else "sft",
        "learning_rate": recipe.learning_rate,
        "per_device_train_batch_size": recipe.batch_size,
        "max_steps": recipe.max_steps(training.rows or 0),
        # A checkpoint at the end of each epoch, the last 3 kept, as OpenAI keeps its jobs' last 3 epochs.
        "save_steps": recipe.steps_per_epoch(training.rows or 0),
        "save_total_limit": 3,
        **recipe.spec,
    }
    if source is not None:  # its adapter goes on training: the same kind of adapter on the same base
        spec |= {"init_from_run": source.id, "method": source.spec.get("method"),
                 "quantization": source.spec.get("quantization")}  # fmt: skip
    if recipe.beta is not None:
        spec["beta"] = recipe.beta
    if request.seed is not None:
        spec["seed"] = request.seed
    try:
        return runs_service.create_run(
            session=session,
            settings=settings,
            body=spec,
            beside=lambda run: [_job_row(run, request, recipe.hyperparameters())],
        )
    except JobRefused:
        raise
    except InvalidInput as exc:
        raise _refusal(exc) from None


def _job_row(run: Run, request: JobRequest, hyperparameters: dict[str, Any]) -> OpenAIJob:
    return OpenAIJob(
        run_id=run.id,
        model=request.model,
        suffix=request.suffix,
        training_file=request.training_file,
        validation_file=request.validation_file,
        method=request.method,
        hyperparameters=hyperparameters,
        seed=run.spec.get("seed"),
        job_metadata=request.metadata,
    )


def _base(session: Session, settings: Settings, model: str) -> tuple[str, Run | None]:
    """(base_model, run to continue from) for the request's `model`: a base id, or an `ft:` id whose run's
    adapter the new run starts from (as the dashboard's "continue from run")."""
    tuned = parse_fine_tuned(model)
    if tuned is None:
        base = resolve_base(model, settings)
        if base is None:
            raise JobRefused("model", f"no base model {model[:80]!r}; GET /v1/models lists them")
        return base, None
    if tuned.step is not None:
        raise JobRefused("model", "a checkpoint cannot be fine-tuned further; use the job's fine_tuned_model")
    source = session.get(Run, tuned.run_id)
    if source is None or source.status not in (RunStatus.succeeded, RunStatus.stopped):
        raise JobRefused("model", f"{model[:120]} is not a fine-tuned model of a succeeded job")
    return str(source.spec["base_model"]), source


def _file(session: Session, file: str | None, param: str, method: str) -> Dataset | None:
    if file is None:
        return None
    try:
        dataset = openai_files.get_file(session=session, file=file)
    except NotFound as exc:
        raise NotFound(f"{param}: {exc}") from None
    objective = REGISTRY["dpo" if method == "dpo" else "sft"]
    if dataset.shape and dataset.shape not in objective.shapes:
        wanted = (
            "preference rows (input, preferred_output, non_preferred_output)"
            if method == "dpo"
            else ("chat rows (messages) or prompt/completion rows")
        )
        raise JobRefused(param, f"{file} holds {dataset.shape} rows; method {method} trains on {wanted}")
    return dataset


def _refusal(exc: InvalidInput) -> JobRefused:
    """The runs service's refusal, with the request's parameter it is about."""
    first = exc.errors[0] if exc.errors else {}
    named = FIELD.match(str(exc))
    field = str(first["loc"][0]) if first.get("loc") else named.group(1) if named else None
    return JobRefused(PARAMS.get(field or ""), f"the job cannot be run: {exc}")


# --- read


@dataclass(frozen=True)
class Page:
    runs: list[Run]
    has_more: bool


def list_jobs(*, session: Session, after: str | None, limit: int) -> Page:
    """Jobs newest first (every run that is not archived, from the API or the dashboard), `limit` after `after`."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit: must be between 1 and {MAX_LIST}")
    query = select(Run).where(Run.archived_at.is_(None)).order_by(Run.created_at.desc(), Run.id.desc())
    if after:
        try:
            cursor = get_job(session=session, job=after)
        except NotFound:
            raise InvalidInput(f"after: no job with id {after[:80]}") from None
        query = query.where(or_(Run.created_at < cursor.created_at,
                                and_(Run.created_at == cursor.created_at, Run.id < cursor.id)))  # fmt: skip
    found = list(session.scalars(query.limit(limit + 1)))
    return Page(found[:limit], len(found) > limit)


# --- change


def cancel_job(*, session: Session, job: str) -> Run:
    """A queued or running job ends `cancelled` (a running one at its next step); a paused one at once."""
    run = get_job(session=session, job=job)
    if run.status == RunStatus.stopped and session.get(OpenAIJob, run.id) is not None:
        run.status = RunStatus.cancelled  # paused: nothing is training it, and resume is no longer offered
        session.commit()
        return run
    try:
        return runs_service.cancel_run(session=session, run_id=run.id)
    except Conflict:
        ended = job_status(run, None)
        raise JobRefused(None, f"job {job} has already {ended}; only a queued or running job is") from None


def pause_job(*, session: Session, job: str) -> Run:
    """Stop a running job with a checkpoint and its adapter saved; it shows `paused` once the worker stopped it."""
    run = get_job(session=session, job=job)
    if session.get(OpenAIJob, run.id) is None:
        raise JobRefused(None, f"job {job} was started in the dashboard; stop it there (resume is for API jobs)")
    if run.status != RunStatus.running:
        raise JobRefused(None, f"job {job} is {job_status(run, None)}: only a running job can be paused")
    return runs_service.stop_run(session=session, run_id=run.id)


def resume_job(*, session: Session, settings: Settings, job: str) -> Run:
    """A paused job trains on from its last checkpoint, the same run (and job id) queued again."""
    run = get_job(session=session, job=job)
    row = session.get(OpenAIJob, run.id)
    if row is None or job_status(run, row) != "paused":
        raise JobRefused(None, f"job {job} is {job_status(run, row)}: only a paused job can be resumed")
    saved = runs_service.run_checkpoints(session=session, settings=settings, run_id=run.id)
    complete = [checkpoint for checkpoint in saved if checkpoint.complete]
    if not complete:
        raise JobRefused(None, f"job {job} saved no checkpoint to resume from; create a new job")
    return checkpoints.resume_from_checkpoint(session=session, settings=settings, run_id=run.id, step=complete[-1].step)
