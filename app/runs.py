"""Run, metric and artifact operations, shared by the web routes and the worker.

Functions take the session and keyword-only arguments, so the web and the worker call the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.archive import archive_name, describe_tree
from app.contracts.evaluation import evaluation_of
from app.errors import Conflict, NotFound
from app.models import Artifact, ArtifactKind, ArtifactStatus, Base, Metric, Run, RunStatus, utcnow
from app.rundir import RunDir
from app.schemas import RunSpec

METRIC_FIELDS = (
    "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "tokens_seen", "token_accuracy", "values",
    "mfu", "gpu_memory_bytes", "gpu_peak_bytes",
)  # fmt: skip


def create_run(*, session: Session, spec: RunSpec, beside: Callable[[Run], Iterable[Base]] = lambda run: ()) -> Run:
    """Store a queued run; `beside` gives rows that belong to it (an OpenAI job's request), committed with it in
    one transaction, so no reader ever sees the run without them."""
    run = Run(name=spec.name, spec=spec.model_dump(mode="json"), status=RunStatus.queued, max_steps=spec.max_steps)
    session.add(run)
    session.flush()  # the run's id, for the rows beside it
    session.add_all(beside(run))
    session.commit()
    return run


def get_run(*, session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id}")
    return run


def list_runs(
    *,
    session: Session,
    status: str | None = None,
    search: str | None = None,
    limit: int = 100,
    offset: int = 0,
    archived: bool | None = False,
) -> Sequence[Run]:
    """Runs, newest first; `search` matches part of the name, case-insensitively. Archived runs are left
    out unless `archived` is True (only them) or None (all)."""
    query = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit).offset(offset)
    if archived is not None:
        query = query.where(Run.archived_at.is_not(None) if archived else Run.archived_at.is_(None))
    if status:
        query = query.where(Run.status == status)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Run.name.ilike(f"%{escaped}%", escape="\\"))
    return session.scalars(query).all()


def final_eval_losses(*, session: Session, run_ids: Sequence[str]) -> dict[str, float]:
    """Run id -> the loss of its last evaluation (kind "eval"), for the runs that have one: one query."""
    return _final_eval(session, run_ids, Metric.loss)


def final_token_accuracies(*, session: Session, run_ids: Sequence[str]) -> dict[str, float]:
    """Run id -> the token accuracy of its last evaluation, for the runs that have one: one query."""
    return _final_eval(session, run_ids, Metric.token_accuracy)


def _final_eval(session: Session, run_ids: Sequence[str], column: Any) -> dict[str, float]:
    if not run_ids:
        return {}
    last = (
        select(Metric.run_id, func.max(Metric.step).label("step"))
        .where(Metric.run_id.in_(run_ids), Metric.kind == "eval", column.is_not(None))
        .group_by(Metric.run_id)
        .subquery()
    )
    rows = session.execute(
        select(Metric.run_id, column)
        .join(last, (Metric.run_id == last.c.run_id) & (Metric.step == last.c.step))
        .where(Metric.kind == "eval", column.is_not(None))
    ).all()
    return {run_id: float(value) for run_id, value in rows if value is not None}


def exact_match(run: Run, side: str = "adapter") -> float | None:
    """The share of eval rows the adapter (or the base) answered exactly, once the evaluation has run."""
    evaluation = evaluation_of(run.evaluation)
    if evaluation is None or evaluation.task is None:
        return None
    return (evaluation.task.base if side == "base" else evaluation.task.adapter).exact_match


# Columns the runs list and the compare page sort by: a run (and its final eval loss) -> a sort key.
SORT_KEYS: dict[str, Any] = {
    "created": lambda run, eval_loss: run.created_at,
    "name": lambda run, eval_loss: run.name.lower(),
    "last_loss": lambda run, eval_loss: run.last_loss,
    "eval_loss": lambda run, eval_loss: eval_loss,
    "exact_match": lambda run, eval_loss: exact_match(run),
}
ASCENDING = ("name", "last_loss", "eval_loss")  # lower is better, or alphabetical; the rest: highest first


def sort_runs(listed: Sequence[Run], eval_losses: dict[str, float], sort: str) -> list[Run]:
    """The runs ordered by a SORT_KEYS column, best first; runs without a value go last."""
    key = SORT_KEYS.get(sort)
    if key is None or sort == "created":
        return list(listed)
    having = [run for run in listed if key(run, eval_losses.get(run.id)) is not None]
    missing = [run for run in listed if key(run, eval_losses.get(run.id)) is None]
    having.sort(key=lambda run: key(run, eval_losses.get(run.id)), reverse=sort not in ASCENDING)
    return having + missing


def queue_positions(*, session: Session) -> dict[str, int]:
    """Queued run id -> its place in the queue (1 trains next)."""
    queued = session.scalars(
        select(Run.id).where(Run.status == RunStatus.queued).order_by(Run.created_at, Run.id)
    ).all()
    return {run_id: position for position, run_id in enumerate(queued, start=1)}


def list_metrics(*, session: Session, run_id: str, after_step: int = -1) -> Sequence[Metric]:
    query = select(Metric).where(Metric.run_id == run_id, Metric.step > after_step).order_by(Metric.step, Metric.id)
    return session.scalars(query).all()


def claim_run(*, session: Session, run_id: str, worker: str) -> bool:
    """Move a run from queued or interrupted to running, atomically: only one worker ever wins.

    A running run is never taken, even from a worker that looks dead: the reaper first moves it to
    interrupted, conditionally on the lease it saw expire (worker/runtime/reaper.py), so two workers never train it.
    """
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([RunStatus.queued, RunStatus.interrupted]))
        .where(Run.cancel_requested.is_(False))
        # The lease starts with the claim; the reason a resumed run was interrupted goes with it.
        .values(status=RunStatus.running, worker=worker, started_at=now, heartbeat_at=now, error=None, finished_at=None)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_run(
    *, session: Session, run_id: str, status: RunStatus, error: str | None = None, worker: str | None = None
) -> bool:
    """Record how a run ended. With `worker`, only while that worker still holds the run: a worker whose
    lease was taken away must not overwrite what the run's new owner does. True when it was recorded."""
    query = update(Run).where(Run.id == run_id)
    if worker is not None:
        query = query.where(Run.status == RunStatus.running, Run.worker == worker)
    result = session.execute(query.values(status=status, error=error, finished_at=datetime.now(UTC)))
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_params(*, session: Session, run_id: str, params_all: int, params_trainable: int) -> None:
    session.execute(
        update(Run).where(Run.id == run_id).values(params_all=params_all, params_trainable=params_trainable)
    )
    session.commit()


def record_evaluation(*, session: Session, run_id: str, evaluation: dict[str, Any]) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(evaluation=evaluation))
    session.commit()


def _metric_rows(run_id: str, points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points as rows for one executemany INSERT (a quarter of the ORM's CPU for a batch of points)."""
    return [
        {
            "run_id": run_id,
            "step": int(point["step"]),
            "kind": point.get("kind", "train"),
            "time": float(point["time"]),
            **{name: point.get(name) or None if name == "values" else point.get(name) for name in METRIC_FIELDS},
        }
        for point in points
    ]


def add_metrics(*, session: Session | Connection, run_id: str, points: Sequence[dict[str, Any]]) -> None:
    """Insert a batch of metric points and move the run's progress to the newest one."""
    if not points:
        return
    session.execute(insert(Metric), _metric_rows(run_id, points))
    newest = max(points, key=lambda point: point["step"])
    values: dict[str, Any] = {"step": int(newest["step"])}
    losses = [point for point in points if point.get("loss") is not None and point.get("kind", "train") == "train"]
    if losses:
        values["last_loss"] = float(max(losses, key=lambda point: point["step"])["loss"])
    session.execute(update(Run).where(Run.id == run_id).values(**values))
    session.commit()


def truncate_metrics(*, session: Session, run_id: str, after_step: int) -> int:
    """Drop the metric points past `after_step` (steps a resumed run will train again); returns how many."""
    result = session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step > after_step))
    newest = session.scalar(select(func.max(Metric.step)).where(Metric.run_id == run_id))
    session.execute(update(Run).where(Run.id == run_id).values(step=newest or 0))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def request_cancel(*, session: Session, run_id: str) -> Run:
    """Ask a run to stop. A queued run is cancelled at once; a running one at its next step."""
    run = get_run(session=session, run_id=run_id)
    if RunStatus(run.status).finished:
        raise Conflict(f"run {run_id} has already {run.status}")
    run.cancel_requested = True
    if run.status == RunStatus.queued:
        run.status = RunStatus.cancelled
        run.finished_at = utcnow()
    session.commit()
    return run


def request_stop(*, session: Session, run_id: str) -> Run:
    """Stop and keep what it learned: a running run saves a checkpoint and its adapter at the next step and
    ends `stopped`; a queued one has learned nothing and is cancelled at once."""
    run = get_run(session=session, run_id=run_id)
    if RunStatus(run.status).finished:
        raise Conflict(f"run {run_id} has already {run.status}")
    if run.status == RunStatus.queued:
        return request_cancel(session=session, run_id=run_id)
    run.stop_requested = True
    session.commit()
    return run


def stop_flags(*, session: Session | Connection, run_id: str) -> tuple[bool, bool]:
    """(cancel_requested, stop_requested) in one query: what a training run's control thread reads on its
    connection when the web nudges it, and every few seconds besides (worker.engine.callbacks)."""
    row = session.execute(select(Run.cancel_requested, Run.stop_requested).where(Run.id == run_id)).first()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def delete_run(*, session: Session, run_id: str) -> Run:
    """Delete a finished run's rows (its metrics and artifacts go with it). Refused while it may still train:
    cancel it first. The caller removes its directory (app.rundir.RunDir.remove)."""
    run = get_run(session=session, run_id=run_id)
    if not RunStatus(run.status).finished:
        raise Conflict(f"run {run_id} is {run.status}: cancel or stop it first, then delete it")
    making = session.scalars(
        select(Artifact.kind).where(
            Artifact.run_id == run_id, Artifact.status.in_((ArtifactStatus.pending, ArtifactStatus.running))
        )
    ).first()
    if making is not None:
        # Its worker reads the run's files and writes beside them: deleting them under it would fail it midway.
        what = "a merge" if making == ArtifactKind.merged else "an export"
        raise Conflict(f"run {run_id}: {what} of it is being made; wait until it is ready or failed, then delete it")
    session.execute(delete(Metric).where(Metric.run_id == run_id))
    session.execute(delete(Artifact).where(Artifact.run_id == run_id))
    session.delete(run)
    session.commit()
    return run


def set_archived(*, session: Session, run_id: str, archived: bool) -> Run:
    """Archive (hide from the runs list and the pickers, keep everything) or bring a run back."""
    run = get_run(session=session, run_id=run_id)
    run.archived_at = utcnow() if archived else None
    session.commit()
    return run


def fail_unplaceable(*, session: Session, run_id: str, error: str) -> bool:
    """A waiting run that no worker online can hold fails with the reason (if it is still waiting)."""
    waiting = (RunStatus.queued, RunStatus.interrupted)
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(waiting))
        .values(status=RunStatus.failed, error=error, finished_at=utcnow())
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def list_artifacts(*, session: Session, run_id: str) -> Sequence[Artifact]:
    query = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.created_at, Artifact.id)
    return session.scalars(query).all()


def get_artifact(*, session: Session, artifact_id: str) -> Artifact:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise NotFound(f"no artifact with id {artifact_id}")
    return artifact


def has_adapter(*, session: Session, run_id: str) -> bool:
    """Whether the run's adapter is saved (by training, or taken from one of its checkpoints)."""
    adapter = session.scalar(
        select(Artifact.id).where(
            Artifact.run_id == run_id, Artifact.kind == ArtifactKind.adapter, Artifact.status == ArtifactStatus.ready
        )
    )
    return adapter is not None


def can_merge(*, session: Session, run: Run) -> bool:
    """A succeeded (or stopped) run; one whose adapter is saved while base and adapter are still being
    evaluated; or a cancelled or failed one whose adapter was taken from a checkpoint."""
    if run.status in (RunStatus.succeeded, RunStatus.stopped):
        return True
    with_adapter = (RunStatus.running, RunStatus.cancelled, RunStatus.failed)
    return run.status in with_adapter and has_adapter(session=session, run_id=run.id)


def request_merge(*, session: Session, run_id: str, dtype: str) -> tuple[Artifact, bool]:
    """The run's merged-model artifact, created pending if there is none; True when it is new."""
    run = get_run(session=session, run_id=run_id)
    if not can_merge(session=session, run=run):
        raise Conflict(f"run {run_id} is {run.status} with no adapter yet: a run is merged once its adapter is saved")
    existing = session.scalar(
        select(Artifact)
        .where(Artifact.run_id == run_id, Artifact.kind == ArtifactKind.merged)
        .where(Artifact.status != ArtifactStatus.failed)
    )
    if existing is not None:
        return existing, False
    artifact = Artifact(
        run_id=run_id, kind=ArtifactKind.merged, status=ArtifactStatus.pending, details={"dtype": dtype}
    )
    session.add(artifact)
    session.commit()
    return artifact, True


def request_export(*, session: Session, run_id: str, gguf_type: str) -> tuple[Artifact, bool]:
    """The run's GGUF export of this type, created pending if there is none (a failed one is tried again);
    True when it is new. Merged first by the export itself when the run has no merged model yet."""
    run = get_run(session=session, run_id=run_id)
    if not can_merge(session=session, run=run):
        raise Conflict(f"run {run_id} is {run.status} with no adapter yet: a run is exported once its adapter is saved")
    existing = [
        artifact
        for artifact in session.scalars(
            select(Artifact)
            .where(Artifact.run_id == run_id, Artifact.kind == ArtifactKind.gguf)
            .where(Artifact.status != ArtifactStatus.failed)
        )
        if (artifact.details or {}).get("type") == gguf_type
    ]
    if existing:
        return existing[0], False
    artifact = Artifact(
        run_id=run_id, kind=ArtifactKind.gguf, status=ArtifactStatus.pending, details={"type": gguf_type}
    )
    session.add(artifact)
    session.commit()
    return artifact, True


def count_metrics(*, session: Session, run_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id)) or 0)


def renew_lease(*, session: Session, run_id: str, worker: str) -> bool:
    """The worker training a run says it is alive; False when the run is no longer its own to train."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running, Run.worker == worker)
        .values(heartbeat_at=utcnow())
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def leases(*, session: Session, statuses: Sequence[RunStatus]) -> list[tuple[str, str, datetime | None, bool]]:
    """(id, status, heartbeat_at, cancel_requested) of the runs in these states: what a reaper watches."""
    query = select(Run.id, Run.status, Run.heartbeat_at, Run.cancel_requested).where(Run.status.in_(list(statuses)))
    return [(row[0], row[1], row[2], bool(row[3])) for row in session.execute(query)]


def update_run_if(
    *, session: Session, run_id: str, status: RunStatus, heartbeat_at: datetime | None, values: dict[str, Any]
) -> bool:
    """Apply `values` only if the run is still in `status` with the heartbeat the caller saw.

    Every move a reaper makes sets a new heartbeat_at, and so does every renewal: of two reapers acting on
    what they both saw, one wins and the other changes nothing, and a lease renewed meanwhile stays put.
    """
    seen = Run.heartbeat_at.is_(None) if heartbeat_at is None else Run.heartbeat_at == heartbeat_at
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.status == status, seen).values(heartbeat_at=utcnow(), **values)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_owned_metrics(
    *, session: Session | Connection, run_id: str, worker: str, points: Sequence[dict[str, Any]]
) -> bool:
    """`add_metrics`, only while `worker` holds the run; False (nothing written) once the run was taken away.

    The progress UPDATE goes first and is conditional: it takes the run's row (the write lock on SQLite), so
    a reaper cannot move the run between the check and the inserts, and a worker that lost its lease never
    writes points into the history of the worker that resumed the run.
    """
    if not points:
        return True
    newest = max(points, key=lambda point: point["step"])
    values: dict[str, Any] = {"step": int(newest["step"])}
    losses = [point for point in points if point.get("loss") is not None and point.get("kind", "train") == "train"]
    if losses:
        values["last_loss"] = float(max(losses, key=lambda point: point["step"])["loss"])
    owned = session.execute(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.running, Run.worker == worker).values(**values)
    )
    if not owned.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.execute(insert(Metric), _metric_rows(run_id, points))
    session.commit()
    return True


def adapter_artifact(run_dir: RunDir, details: dict[str, Any]) -> Artifact:
    """A ready adapter artifact for what lies in the run's adapter folder, its archive's size and sha256 worked
    out (not yet added to a session): training's own adapter, or a checkpoint's taken as the adapter."""
    tree = describe_tree(run_dir.adapter_dir, prefix=archive_name(run_dir.run_id, ArtifactKind.adapter))
    return Artifact(
        run_id=run_dir.run_id,
        kind=ArtifactKind.adapter,
        status=ArtifactStatus.ready,
        path=run_dir.relative(run_dir.adapter_dir),
        size_bytes=tree["archive_size"],
        sha256=tree["archive_sha256"],
        files=tree["files"],
        details=details,
    )


def record_hardware(*, session: Session, run_id: str, hardware: dict[str, Any]) -> None:
    """What the run trains on, as the worker found it at train begin: {"device", "peak_flops" (None: not in the
    GPU table, or the CPU), "flops_per_token" (None: no formula for the model's shape, or rows not tokenized),
    "gpus", "mean_row_tokens", "no_mfu" (what MFU needs that the run lacks, as the run page words it)}."""
    session.execute(update(Run).where(Run.id == run_id).values(hardware=hardware))
    session.commit()


def record_fast_paths(*, session: Session, run_id: str, fast_paths: list[dict[str, str]]) -> None:
    """The throughput switches as the worker resolved them ({name, asked, chosen, reason} each, from
    worker.engine.fastpaths.FastPath.record), written before training starts; a resumed run writes its own."""
    session.execute(update(Run).where(Run.id == run_id).values(fast_paths=fast_paths))
    session.commit()
