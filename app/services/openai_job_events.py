"""A fine-tuning job's events and checkpoints in OpenAI's shapes, read from the run's own records: its state
changes (message events), its metric points (metrics events: the train and eval points of one step together)
and its saved checkpoints. Nothing is stored twice; ids are stable, so `after` pages through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput
from app.models import Metric, OpenAIJob, Run
from app.openai_ids import base_id, fine_tuned_id
from app.rundir import RunDir
from app.services.openai_job_object import job_id, job_object, unix_time
from app.services.openai_jobs import get_job

MAX_LIST = 100
MAX_POINTS = 20_000  # a run's metric points read for its events (a 20k-step run logging every step)


@dataclass(frozen=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool


def _page(items: Sequence[dict[str, Any]], after: str | None, limit: int) -> Page:
    """`limit` items past the one with id `after` (items newest first)."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit: must be between 1 and {MAX_LIST}")
    start = 0
    if after:
        found = next((index for index, item in enumerate(items) if item["id"] == after), None)
        if found is None:
            raise InvalidInput(f"after: no item with id {after[:80]} in this job")
        start = found + 1
    return Page(list(items[start : start + limit]), start + limit < len(items))


def _points(session: Session, run_id: str) -> dict[int, dict[str, Metric]]:
    """The run's metric points by step, train and eval apart (the latest of each kind at a step)."""
    rows = session.scalars(select(Metric).where(Metric.run_id == run_id).order_by(Metric.id).limit(MAX_POINTS))
    steps: dict[int, dict[str, Metric]] = {}
    for metric in rows:
        steps.setdefault(metric.step, {})[metric.kind] = metric
    return steps


def _metrics_data(step: int, points: dict[str, Metric], total: int | None) -> dict[str, Any]:
    train, valid = points.get("train"), points.get("eval")
    return {
        "step": step,
        "train_loss": train.loss if train else None,
        "valid_loss": valid.loss if valid else None,
        "train_mean_token_accuracy": train.token_accuracy if train else None,
        "valid_mean_token_accuracy": valid.token_accuracy if valid else None,
        "total_steps": total,
    }


def list_events(*, session: Session, settings: Settings, job: str, after: str | None, limit: int) -> Page:
    run = get_job(session=session, job=job)
    return _page(job_events(session=session, settings=settings, run=run), after, limit)


def job_events(*, session: Session, settings: Settings, run: Run) -> list[dict[str, Any]]:
    """Every event of the job, newest first."""
    job = job_object(session=session, settings=settings, run=run)
    started = run.started_at if run.started_at else None
    events: list[tuple[int, str, dict[str, Any]]] = []

    def add(moment: int, key: str, message: str, *, level: str = "info", data: Any = None, kind: str = "message"
            ) -> None:  # fmt: skip
        event = {"id": f"ftevent-{run.id}-{key}", "object": "fine_tuning.job.event", "created_at": moment,
                 "level": level, "message": message, "type": kind, "data": data}  # fmt: skip
        events.append((moment, key, event))

    add(job["created_at"], "0-created", f"Created fine-tuning job: {job['id']}")
    if started is not None:
        add(unix_time(started), "1-started", "Fine-tuning job started")
    total = run.max_steps if run.max_steps and run.max_steps > 0 else None
    last = unix_time(run.finished_at or run.started_at or run.created_at)
    for step, points in sorted(_points(session, run.id).items()):
        data = _metrics_data(step, points, total)
        moment = unix_time(started + timedelta(seconds=next(iter(points.values())).time)) if started else last
        moment = min(moment, last) if run.finished_at else moment  # a resumed run's times count from its first start
        loss = f"training loss={data['train_loss']:.4f}" if data["train_loss"] is not None else ""
        valid = f"validation loss={data['valid_loss']:.4f}" if data["valid_loss"] is not None else ""
        message = f"Step {step}/{total or '?'}: " + ", ".join(part for part in (loss, valid) if part)
        add(moment, f"2-step-{step:09d}", message, data=data, kind="metrics")
    status = job["status"]
    if status == "succeeded":
        add(last, "3-model", f"New fine-tuned model created: {job['fine_tuned_model']}")
        add(last, "4-done", "The job has successfully completed")
    elif status == "failed":
        add(last, "4-done", f"The job failed: {job['error']['message']}", level="error")
    elif status == "cancelled":
        add(last, "4-done", "The job was cancelled")
    elif status == "paused":
        add(last, "4-done", "The job was paused; resume it to train on from its last checkpoint")
    events.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [event for _, _, event in events]


def list_checkpoints(*, session: Session, settings: Settings, job: str, after: str | None, limit: int) -> Page:
    run = get_job(session=session, job=job)
    return _page(job_checkpoints(session=session, settings=settings, run=run), after, limit)


def job_checkpoints(*, session: Session, settings: Settings, run: Run) -> list[dict[str, Any]]:
    """The run's complete checkpoints as OpenAI's FineTuningJobCheckpoint, newest first; each one's model id
    answers chat completions."""
    row = session.get(OpenAIJob, run.id)
    base = base_id(str(run.spec.get("base_model", "")), settings)
    points = _points(session, run.id)
    found = []
    for checkpoint in reversed(RunDir.of(run.id, settings).checkpoints(complete_only=True)):
        at_or_before = [step for step in points if step <= checkpoint.step]
        nearest = points[max(at_or_before)] if at_or_before else {}
        metrics = _metrics_data(checkpoint.step, nearest, None)
        metrics.pop("total_steps")
        found.append({
            "id": f"ftckpt-{run.id}-{checkpoint.step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": int(datetime.fromtimestamp(checkpoint.path.stat().st_mtime, UTC).timestamp()),
            "fine_tuned_model_checkpoint": fine_tuned_id(base, row.suffix if row else None, run.id, checkpoint.step),
            "fine_tuning_job_id": job_id(run.id),
            "metrics": metrics,
            "step_number": checkpoint.step,
        })  # fmt: skip
    return found
