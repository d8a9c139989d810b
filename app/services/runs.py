"""Runs: submit and queue, look up and list, cancel, stop, archive, delete, merge; their files and artifacts.

The API, the pages and the CLI call these; each raises domain errors (app.errors) that say what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import metrics, runs
from app.config import Settings
from app.errors import InvalidInput, Unavailable
from app.events import nudge, senders_key, stream_key
from app.models import Artifact, ArtifactStatus, Base, Run, RunStatus, utcnow
from app.objectives import REGISTRY, Objective
from app.preflight import spec_setting_aside, validate_spec
from app.queue import (
    Queue,
    ask_estimate,
    enqueue_export,
    enqueue_merge,
    enqueue_train,
    reaching_redis,
)
from app.rundir import Checkpoint, RunDir
from app.schemas import GGUF_TYPES, RunSpec, with_default_eval
from app.workers import list_workers

log = logging.getLogger(__name__)
MODULE_FIELDS = ("target_modules", "modules_to_save", "feedforward_modules")
MAX_CONTINUED = 50  # runs listed as "continued by" on a run page, oldest first


# --- submitting
def create_run(
    *, session: Session, settings: Settings, body: Any, beside: Callable[[Run], Iterable[Base]] = lambda run: ()
) -> Run:
    """A run from a RunSpec as a client sends it (every problem in one 422), scored on its dataset's eval
    data when it says nothing of evaluation; stored with the rows `beside` gives for it, then queued."""
    try:
        spec = with_default_eval(validate_spec(body, settings))
    except InvalidInput as exc:
        failed = {str(error["loc"][0]) for error in exc.errors if error.get("loc")}
        modules = module_problems_beside(body, failed) if isinstance(body, Mapping) else {}
        if not modules:
            raise
        raise InvalidInput(errors=exc.errors + InvalidInput.fields(modules).errors) from None
    return submit_run(session=session, spec=spec, beside=beside)


def module_problems_beside(values: Mapping[str, Any], failed: set[str]) -> dict[str, str]:
    """For a spec refused for other reasons, the module names its model lacks (module_name_problems), so every
    problem comes in one answer: the other fields set aside, as long as the base model itself is usable."""
    if "base_model" in failed or set(MODULE_FIELDS) <= failed:
        return {}
    spec = spec_setting_aside(values, failed)
    problems = module_name_problems(spec) if spec is not None else {}
    return {name: message for name, message in problems.items() if name not in failed}


def submit_run(*, session: Session, spec: RunSpec, beside: Callable[[Run], Iterable[Base]] = lambda run: ()) -> Run:
    """Store a checked spec's run, with the rows `beside` gives for it in the same transaction, and queue it: a
    worker that picks it up finds them. Module names the model lacks are refused first (asked of an inspect
    worker); if the queue is unreachable, nothing is kept (the rows beside go with the run) and the caller is told."""
    problems = module_name_problems(spec)
    if problems:
        raise InvalidInput.fields(problems)
    run = runs.create_run(session=session, spec=spec, beside=beside)
    enqueue_or_undo(session, run, lambda: enqueue_train(run.id, spec.worker), "the run was not created")
    return run


def enqueue_or_undo(session: Session, row: Any, send: Callable[[], None], undone: str) -> None:
    """Queue a task for a row just stored; if the queue is unreachable, delete the row and say so."""
    try:
        with reaching_redis(undone):
            send()
    except Unavailable:
        session.delete(row)
        session.commit()
        raise


def names_modules(spec: RunSpec) -> bool:
    """Whether the spec names modules that a model may lack (all-linear fits every model)."""
    targets = spec.method != "prompt_tuning" and spec.target_modules != ["all-linear"]
    return targets or bool(spec.modules_to_save) or bool(spec.feedforward_modules)


def module_name_problems(spec: RunSpec) -> dict[str, str]:
    """Field -> why the model lacks the modules it names, from an inspect worker (the web builds no model).
    Without a worker online (or one that cannot read the model) nothing is refused here: the training worker
    checks the same names before it loads any weight."""
    if not names_modules(spec) or not inspector_online():
        return {}
    try:
        answer = ask_estimate(spec.model_dump(mode="json"))
    except Unavailable as exc:
        log.info("module names not checked before queueing: %s", exc)
        return {}
    error = answer.error or ""
    name, _, _ = error.partition(":")
    if not answer.ok and name in MODULE_FIELDS:
        return {name: error}
    return {}


def inspector_online() -> bool:
    from app.config import get_settings

    try:
        client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return any(Queue.inspect.value in record.queues for record in list_workers(client))
        finally:
            client.close()
    except redis.RedisError:
        return False


# --- reading
def get_run(*, session: Session, run_id: str) -> Run:
    return runs.get_run(session=session, run_id=run_id)


def list_runs(
    *, session: Session, status: RunStatus | None = None, limit: int = 100, archived: bool = False
) -> Sequence[Run]:
    return runs.list_runs(session=session, status=status, limit=limit, archived=archived)


@dataclass
class RunsOverview:
    """The runs list as the page shows it: filtered, sorted, with eval losses and queue positions."""

    runs: list[Run]
    eval_losses: dict[str, float]
    sort: str
    positions: dict[str, int]
    token_accuracies: dict[str, float] = field(default_factory=dict)  # of each run's last evaluation
    status: str = ""
    q: str = ""
    archived: bool = False
    now: datetime = field(default_factory=utcnow)


def runs_overview(
    *, session: Session, status: str | None, q: str | None, sort: str | None, archived: bool
) -> RunsOverview:
    listed = runs.list_runs(session=session, status=status or None, search=q or None, limit=100, archived=archived)
    ids = [run.id for run in listed]
    eval_losses = runs.final_eval_losses(session=session, run_ids=ids)
    sort = sort if sort in runs.SORT_KEYS else "created"
    return RunsOverview(
        runs=runs.sort_runs(listed, eval_losses, sort),
        eval_losses=eval_losses,
        token_accuracies=runs.final_token_accuracies(session=session, run_ids=ids),
        sort=sort,
        positions=runs.queue_positions(session=session),
        status=status or "",
        q=q or "",
        archived=archived,
    )


def objective_of(spec: Mapping[str, Any]) -> Objective:
    """The objective a run trains for (a spec stored before objectives existed: sft)."""
    return REGISTRY.get(str(spec.get("objective") or "sft"), REGISTRY["sft"])


def objective_panels(objective: Objective) -> list[dict[str, Any]]:
    """The charts a run page draws beside the loss for its objective, each with the named values it overlays
    (app.objectives: Panel, Series), as the page's script reads them."""
    return [
        {
            "key": panel.key,
            "title": panel.title,
            "unit": panel.unit,
            "series": [{"key": s.key, "label": s.label} for s in objective.series if s.panel == panel.key],
        }
        for panel in objective.panels
    ]


def continuable(run: Run) -> bool:
    """Whether a run's adapter can start another run (init_from_run): it has a final adapter, of a method that
    preference tuning trains on (DPO, the usual next step)."""
    ended = run.status in (RunStatus.succeeded, RunStatus.stopped)
    return ended and run.spec.get("method") in REGISTRY["dpo"].methods


def continuations(*, session: Session, run: Run) -> tuple[Run | None, list[Run]]:
    """The run this one continued from (None: a fresh adapter, or that run is deleted) and the runs continued
    from this one, oldest first. The spec's JSON is read by the database (json_extract on SQLite, ->> on
    PostgreSQL), so a deck of many runs answers in one bounded query."""
    source_id = str(run.spec.get("init_from_run") or "")
    source = session.get(Run, source_id) if source_id else None
    query = (
        select(Run)
        .where(Run.spec["init_from_run"].as_string() == run.id)
        .order_by(Run.created_at, Run.id)
        .limit(MAX_CONTINUED)
    )
    return source, list(session.scalars(query))


def metric_points(
    *, session: Session, run_id: str, after_step: int = -1, max_points: int | None = None
) -> list[dict[str, Any]]:
    get_run(session=session, run_id=run_id)
    return metrics.metric_points(session=session, run_id=run_id, after_step=after_step, max_points=max_points)


def count_metrics(*, session: Session, run_id: str) -> int:
    return runs.count_metrics(session=session, run_id=run_id)


def run_log(*, session: Session, settings: Settings, run_id: str, lines: int) -> list[str]:
    """The last lines of the run's training log."""
    get_run(session=session, run_id=run_id)
    return RunDir.of(run_id, settings).log_tail(lines)


def run_checkpoints(*, session: Session, settings: Settings, run_id: str) -> list[Checkpoint]:
    """The run's checkpoints, oldest first."""
    get_run(session=session, run_id=run_id)
    return RunDir.of(run_id, settings).checkpoints()


def removal_summary(*, settings: Settings, run_id: str) -> dict[str, object]:
    return RunDir.of(run_id, settings).removal_summary()


# --- changing a run
def cancel_run(*, session: Session, run_id: str) -> Run:
    """A queued run is cancelled at once, a running one at its next step (its control thread is told at once)."""
    run = runs.request_cancel(session=session, run_id=run_id)
    _nudge(run)
    return run


def stop_run(*, session: Session, run_id: str) -> Run:
    """Stop and keep what it learned: a checkpoint and the adapter at the next step; it ends `stopped`."""
    run = runs.request_stop(session=session, run_id=run_id)
    _nudge(run)
    return run


def _nudge(run: Run) -> None:
    from app.config import get_settings

    if run.status == RunStatus.running and not nudge(get_settings().redis_url, run.id):
        log.warning("run %s: Redis did not take the nudge; its worker reads the flag from the database", run.id)


def set_archived(*, session: Session, run_id: str, archived: bool) -> Run:
    return runs.set_archived(session=session, run_id=run_id, archived=archived)


def delete_run(*, session: Session, settings: Settings, run_id: str) -> None:
    """Delete a finished run: its rows (metrics, artifacts), its directory and its event stream."""
    runs.delete_run(session=session, run_id=run_id)
    RunDir.of(run_id, settings).remove()
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        client.delete(stream_key(run_id), senders_key(run_id))
        client.close()
    except redis.RedisError:
        pass  # a stream left behind expires with Redis's own trimming; the run is gone from the database


# --- artifacts
def start_merge(*, session: Session, run_id: str, dtype: str) -> Artifact:
    """The run's merged-model artifact, queued on the merge queue unless one is pending or ready."""
    artifact, new = runs.request_merge(session=session, run_id=run_id, dtype=dtype)
    if new:
        enqueue_or_undo(session, artifact, lambda: enqueue_merge(artifact.id), "no merge was queued")
    return artifact


def start_export(*, session: Session, run_id: str, gguf_type: str) -> Artifact:
    """The run's GGUF export of this type, queued on the merge queue unless one is pending or ready."""
    if gguf_type not in GGUF_TYPES:
        raise InvalidInput(f"type: {gguf_type[:40]!r} is not a GGUF type; choose one of {', '.join(GGUF_TYPES)}")
    artifact, new = runs.request_export(session=session, run_id=run_id, gguf_type=gguf_type)
    if new:
        enqueue_or_undo(session, artifact, lambda: enqueue_export(artifact.id), "no export was queued")
    return artifact


def list_artifacts(*, session: Session, run_id: str) -> Sequence[Artifact]:
    get_run(session=session, run_id=run_id)
    return runs.list_artifacts(session=session, run_id=run_id)


def artifacts_in_progress(*, session: Session, run_id: str) -> set[str]:
    """Ids of the run's artifacts being made (a merge or an export, pending or running)."""
    busy = (ArtifactStatus.pending, ArtifactStatus.running)
    return {a.id for a in runs.list_artifacts(session=session, run_id=run_id) if a.status in busy}


def get_artifact(*, session: Session, artifact_id: str) -> Artifact:
    return runs.get_artifact(session=session, artifact_id=artifact_id)


def can_merge(*, session: Session, run: Run) -> bool:
    return runs.can_merge(session=session, run=run)
