"""Celery tasks: each one takes an id (or a typed payload, app.contracts), imports its heavy code when it runs,
and calls a domain function.

Progress goes to the database and the run's Redis Stream, never to a Celery result backend. Every task checks
the paths it reads against the allowed roots (app.preflight, enforce_roots): a spec stored before the roots
changed, or one that reached the queue some other way, reads nothing outside them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task

from app.contracts.estimate import EstimateAnswer
from app.errors import NotFound
from app.queue import (
    COMPLETION_TASK,
    DESCRIBE_DATASET_TASK,
    ESTIMATE_TASK,
    EXPORT_TASK,
    GENERATE_TASK,
    MERGE_TASK,
    TRAIN_TASK,
    Queue,
)

log = logging.getLogger(__name__)


@contextmanager
def unless_deleted(what: str) -> Iterator[None]:
    """A run or artifact deleted while its task waited in the queue leaves nothing to do: say so in a line."""
    try:
        yield
    except NotFound as exc:
        log.info("%s: %s (deleted while its task waited); nothing to do", what, exc)


@shared_task(name=TRAIN_TASK, queue=Queue.train.value, acks_late=True, ignore_result=True)
def train_run(run_id: str) -> None:
    """Train one queued run to succeeded, failed or cancelled, if this worker can hold it; else pass it on."""
    from worker.engine.train import run_training
    from worker.runtime.celery_app import worker_record
    from worker.runtime.scheduling import place

    with unless_deleted(f"run {run_id}"):
        if place(run_id, worker_record()):
            run_training(run_id, enforce_roots=True)


@shared_task(name=MERGE_TASK, queue=Queue.merge.value, acks_late=True, ignore_result=True)
def merge_artifact(artifact_id: str) -> None:
    """Merge a run's adapter into its base model and check the result."""
    from worker.merge.artifact import merge_artifact as merge

    with unless_deleted(f"merge {artifact_id}"):
        merge(artifact_id)


@shared_task(name=EXPORT_TASK, queue=Queue.merge.value, acks_late=True, ignore_result=True)
def export_gguf(artifact_id: str) -> None:
    """Export a run's merged model as one GGUF (merging first when needed), checked by llama.cpp."""
    from worker.export.job import export_artifact

    with unless_deleted(f"export {artifact_id}"):
        export_artifact(artifact_id)


@shared_task(name=ESTIMATE_TASK, queue=Queue.inspect.value, ignore_result=False)
def estimate(spec: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts and a memory estimate for a spec (app.contracts.estimate.EstimateAnswer). A refusal
    comes back as data, never raised."""
    try:
        from worker.engine.estimate import answer_estimate

        return answer_estimate(spec, enforce_roots=True).model_dump(mode="json")
    except Exception as exc:  # raised, it would reach the web as a bare 500
        return EstimateAnswer(ok=False, error=f"{type(exc).__name__}: {exc}").model_dump(mode="json")


@shared_task(name=DESCRIBE_DATASET_TASK, queue=Queue.inspect.value, ignore_result=False)
def describe_dataset(payload: dict[str, Any]) -> dict[str, Any]:
    """Validate and describe a dataset file (app.contracts.datasets); never raises (the web shows the error)."""
    from worker.data.describe import answer_description

    return answer_description(payload).model_dump(mode="json", exclude_unset=True)


@shared_task(name=GENERATE_TASK, queue=Queue.generate.value, ignore_result=True)
def playground(generation_id: str, request: dict[str, Any]) -> None:
    """Answer a playground prompt with the run's base and its adapter (or checkpoint, or merged model)."""
    from worker.serving.generate import run_playground

    run_playground(generation_id, request)


@shared_task(name=COMPLETION_TASK, queue=Queue.generate.value, ignore_result=True)
def completion(request_id: str, job: dict[str, Any]) -> None:
    """Answer an OpenAI chat completion or completion (app.contracts.completions) with one model."""
    from worker.serving.completions import answer_completion

    answer_completion(request_id, job)
