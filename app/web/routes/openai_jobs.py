"""OpenAI's API under `/v1` (see app.web.routes.openai_api): fine-tuning jobs, their events and checkpoints.

A job is a loradeck run (app.services.openai_jobs); the shapes are the `openai` SDK's FineTuningJob,
FineTuningJobEvent and FineTuningJobCheckpoint, lists in its cursor envelope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from app.services import openai_job_events, openai_job_object, openai_jobs
from app.web.deps import SessionDep, SettingsDep
from app.web.openai_errors import OpenAIError

router = APIRouter(prefix="/v1", tags=["openai"])
Limit = Annotated[int, Query(ge=1, le=openai_jobs.MAX_LIST)]


def cursor_list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more}


@router.post("/fine_tuning/jobs")
def create_job(session: SessionDep, settings: SettingsDep, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Create a job (a loradeck run, queued): `model`, `training_file`, and optionally `validation_file`,
    `suffix`, `seed`, `metadata`, `method` or the legacy `hyperparameters` (numbers or "auto")."""
    run = openai_jobs.create_job(session=session, settings=settings, body=body)
    return openai_job_object.job_object(session=session, settings=settings, run=run)


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request, session: SessionDep, settings: SettingsDep, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    """Jobs newest first, runs started in the dashboard among them; `after` a job id and `limit` page them."""
    if any(name.startswith("metadata") for name in request.query_params):
        raise OpenAIError(400, "metadata: filtering jobs by metadata is not supported; list them all", param="metadata")
    page = openai_jobs.list_jobs(session=session, after=after, limit=limit)
    data = [openai_job_object.job_object(session=session, settings=settings, run=run) for run in page.runs]
    return cursor_list(data, page.has_more)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    run = openai_jobs.get_job(session=session, job=job_id)
    return openai_job_object.job_object(session=session, settings=settings, run=run)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """A queued job is cancelled at once, a running one at its next step."""
    run = openai_jobs.cancel_job(session=session, job=job_id)
    return openai_job_object.job_object(session=session, settings=settings, run=run)


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """A running job stops at its next step with a checkpoint saved, then shows `paused`."""
    run = openai_jobs.pause_job(session=session, job=job_id)
    return openai_job_object.job_object(session=session, settings=settings, run=run)


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """A paused job trains on from its last checkpoint, under the same id."""
    run = openai_jobs.resume_job(session=session, settings=settings, job=job_id)
    return openai_job_object.job_object(session=session, settings=settings, run=run)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str, session: SessionDep, settings: SettingsDep, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    """Status messages and metric points (train and validation loss by step), newest first."""
    page = openai_job_events.list_events(session=session, settings=settings, job=job_id, after=after, limit=limit)
    return cursor_list(page.data, page.has_more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str, session: SessionDep, settings: SettingsDep, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    """The job's saved checkpoints, newest first; each `fine_tuned_model_checkpoint` is a model id."""
    page = openai_job_events.list_checkpoints(session=session, settings=settings, job=job_id, after=after, limit=limit)
    return cursor_list(page.data, page.has_more)
