"""A loradeck run as OpenAI's FineTuningJob: the status mapped onto OpenAI's set, the numbers it trains with in
OpenAI's names, its fine-tuned model id once it succeeded, its error. A run created through `/v1` is described from
its OpenAIJob row (what the request asked for); a dashboard run from its spec.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.formatting import progress_of
from app.models import Dataset, Metric, OpenAIJob, Run, RunStatus, utcnow
from app.openai_ids import base_id, fine_tuned_id
from app.services import openai_auto, openai_files

JOB_PREFIX = "ftjob-"
ORGANIZATION = "loradeck"
FINAL = {"succeeded", "failed", "cancelled"}
LINE = re.compile(r"\bline \d+")  # the worker names a dataset's bad row by its line


def job_id(run_id: str) -> str:
    return JOB_PREFIX + run_id


def job_status(run: Run, row: OpenAIJob | None) -> str:
    """OpenAI's status for a run: an interrupted run waits for a worker (queued); a stopped one is paused when
    the API paused it, else it ended early with its adapter (succeeded)."""
    status = RunStatus(run.status)
    if status == RunStatus.interrupted:
        return "queued"
    if status == RunStatus.stopped:
        return "paused" if row is not None else "succeeded"
    return status.value


def job_object(*, session: Session, settings: Settings, run: Run, now: datetime | None = None) -> dict[str, Any]:
    """A run as OpenAI's FineTuningJob."""
    row = session.get(OpenAIJob, run.id)
    spec = run.spec
    status = job_status(run, row)
    base = base_id(str(spec.get("base_model", "")), settings)
    hyperparameters = row.hyperparameters if row else _spec_hyperparameters(session, spec)
    method = row.method if row else ("dpo" if spec.get("objective") == "dpo" else "supervised")
    shown = {key: value for key, value in hyperparameters.items() if key != "beta"}
    progress = progress_of(run, now or utcnow())
    finish = None
    if status == "running" and progress["eta"] is not None:
        finish = unix_time((now or utcnow()) + timedelta(seconds=progress["eta"]))
    return {
        "id": job_id(run.id),
        "object": "fine_tuning.job",
        "created_at": unix_time(row.created_at if row else run.created_at),
        "error": _error(run) if status == "failed" else None,
        "fine_tuned_model": fine_tuned_id(base, row.suffix if row else None, run.id) if status == "succeeded" else None,
        "finished_at": unix_time(run.finished_at) if status in FINAL and run.finished_at else None,
        "hyperparameters": shown,
        "model": row.model if row else base,
        "organization_id": ORGANIZATION,
        "result_files": [],
        "seed": int(spec.get("seed", 42)),
        "status": status,
        "trained_tokens": trained_tokens(session, run.id),
        "training_file": row.training_file if row else _file_of(session, str(spec.get("dataset", ""))),
        "validation_file": row.validation_file if row else _file_of(session, str(spec.get("eval_dataset", ""))),
        "estimated_finish": finish,
        "integrations": [],
        "metadata": row.job_metadata if row else None,
        "method": {"type": method, method: {"hyperparameters": hyperparameters}},
        "user_provided_suffix": row.suffix if row else None,
    }


def _spec_hyperparameters(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """A dashboard run's numbers in OpenAI's names: epochs from its steps and its dataset's rows where known."""
    batch = int(spec.get("per_device_train_batch_size", 1)) * int(spec.get("gradient_accumulation_steps", 1))
    epochs: float | None = float(spec.get("num_train_epochs", 1))
    rows = session.scalar(select(Dataset.rows).where(Dataset.path == spec.get("dataset")).limit(1))
    if int(spec.get("max_steps", -1)) > 0:
        epochs = math.ceil(int(spec["max_steps"]) * batch / rows) if rows else None
    method = "dpo" if spec.get("objective") == "dpo" else "sft"
    rate = float(spec.get("learning_rate", openai_auto.SFT_LEARNING_RATE))
    values: dict[str, Any] = {
        "batch_size": batch,
        "learning_rate_multiplier": rate / openai_auto.base_learning_rate(str(spec.get("base_model", "")), method),
        "n_epochs": int(epochs) if epochs is not None and epochs == int(epochs) else epochs,
    }
    if method == "dpo":
        values["beta"] = spec.get("beta")
    return values


def _file_of(session: Session, path: str) -> str | None:
    """The file id of a dashboard run's dataset where it was uploaded, else its path as the run names it."""
    if not path:
        return None
    found = session.scalar(select(Dataset.id).where(Dataset.path == path).limit(1))
    return openai_files.FILE_PREFIX + found if found else path


def _error(run: Run) -> dict[str, Any]:
    message = run.error or "the run failed without a message; see its train.log in the dashboard"
    if LINE.search(message):
        return {"code": "invalid_training_file", "message": message, "param": "training_file"}
    return {"code": "training_failed", "message": message, "param": None}


def trained_tokens(session: Session, run_id: str) -> int | None:
    return session.scalar(select(Metric.tokens_seen).where(Metric.run_id == run_id, Metric.tokens_seen.is_not(None))
                          .order_by(Metric.step.desc()).limit(1))  # fmt: skip


def unix_time(moment: datetime) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
