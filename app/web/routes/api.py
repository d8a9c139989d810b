"""The JSON API under /api/v1: the contract of design.md. The pages call the same functions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app import runs
from app.config import get_settings
from app.events import Event, position_before_step, stream_key
from app.metrics import metric_points
from app.models import Artifact, Run, RunStatus
from app.paths import spec_path_problems
from app.preflight import module_name_problems
from app.queue import enqueue_merge, enqueue_train
from app.run_files import checkpoints, log_tail, remove_run_dir
from app.schemas import RunSpec, with_default_eval
from app.web.api_models import ArtifactOut, MergeRequest, MetricOut, RunOut
from app.web.deps import SessionDep, SettingsDep
from app.web.downloads import download_response
from app.web.live import live_hub

router = APIRouter(prefix="/api/v1", tags=["api"])
# Past any run's steps (max_steps <= 1e7), and inside the metrics table's step column (32-bit on PostgreSQL).
MAX_STEP = 2**31 - 1


def artifact_out(artifact: Artifact) -> ArtifactOut:
    out = ArtifactOut.model_validate(artifact)
    if artifact.status == "ready":
        out.download_url = f"/api/v1/artifacts/{artifact.id}/download"
    return out


def refuse_field_problems(problems: dict[str, str]) -> None:
    """422 in the shape of a validation error, one item per field."""
    if problems:
        detail = [{"loc": ["body", name], "msg": message, "type": "value_error"} for name, message in problems.items()]
        raise HTTPException(422, detail)


def refuse_paths_outside_roots(spec: RunSpec) -> None:
    """422 naming each field whose path lies outside the allowed roots."""
    refuse_field_problems(spec_path_problems(spec, get_settings()))


def submit_run(*, session: SessionDep, spec: RunSpec) -> Run:
    """Store the run and queue it. If the queue is unreachable, nothing is kept and the caller is told.
    Paths outside the roots and module names the model lacks (asked of an inspect worker) are refused first."""
    refuse_paths_outside_roots(spec)
    refuse_field_problems(module_name_problems(spec))
    run = runs.create_run(session=session, spec=spec)
    enqueue_or_undo(session, run, lambda: enqueue_train(run.id, spec.worker), "the run was not created")
    return run


def enqueue_or_undo(session: SessionDep, row: Any, send: Callable[[], None], undone: str) -> None:
    """Queue a task for a row just stored; if the queue is unreachable, delete the row and say so (503)."""
    try:
        send()
    except (redis.RedisError, OSError) as exc:
        session.delete(row)
        session.commit()
        raise HTTPException(503, f"the task queue (Redis) is unreachable, so {undone}: {exc}") from exc


def lookup_run(session: SessionDep, run_id: str) -> Run:
    try:
        return runs.get_run(session=session, run_id=run_id)
    except runs.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post("/runs", status_code=201)
def create_run(spec: RunSpec, session: SessionDep) -> RunOut:
    """Create a run from a RunSpec and queue it for training."""
    return RunOut.model_validate(submit_run(session=session, spec=with_default_eval(spec)))


@router.get("/runs")
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    archived: bool = False,
) -> list[RunOut]:
    """Runs, newest first, optionally only those in one status; `archived=true` lists the archived ones."""
    listed = runs.list_runs(session=session, status=status, limit=limit, archived=archived)
    return [RunOut.model_validate(run) for run in listed]


@router.get("/runs/{run_id}")
def get_run(run_id: str, session: SessionDep) -> RunOut:
    """One run: status, spec, parameter counts, progress and error."""
    return RunOut.model_validate(lookup_run(session, run_id))


@router.get("/runs/{run_id}/metrics", response_model=list[MetricOut])
def get_metrics(
    run_id: str,
    session: SessionDep,
    after_step: Annotated[int, Query(ge=-1, le=MAX_STEP)] = -1,
    max_points: Annotated[int | None, Query(ge=10, le=100_000)] = None,
) -> JSONResponse:
    """The run's metric points so far, by step; `after_step` returns only the newer ones, `max_points`
    averages a long history into that many buckets for drawing (the database keeps every point)."""
    lookup_run(session, run_id)
    return JSONResponse(metric_points(session=session, run_id=run_id, after_step=after_step, max_points=max_points))


@router.get("/runs/{run_id}/log")
def get_log(
    run_id: str, session: SessionDep, settings: SettingsDep, lines: Annotated[int, Query(ge=1, le=5000)] = 200
) -> dict[str, list[str]]:
    """The last lines of the run's training log."""
    lookup_run(session, run_id)
    return {"lines": log_tail(settings, run_id, lines)}


@router.get("/runs/{run_id}/checkpoints")
def get_checkpoints(run_id: str, session: SessionDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """The run's checkpoints (to resume from), oldest first, with step and size."""
    lookup_run(session, run_id)
    return checkpoints(settings, run_id)


@router.get("/runs/{run_id}/events")
async def run_events(
    run_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Query()] = None,
    after_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-sent events of the run: status, params, metric, log, checkpoint, artifact, done.

    Resumes after `Last-Event-ID` (or `?last_event_id=`); `?after_step=N` starts just before the metric
    points past step N, for a page that has drawn the stored history up to N."""
    run = lookup_run(session, run_id)
    finished = RunStatus(run.status).finished
    session.close()
    after = last_event_id_header or last_event_id or "0-0"

    async def stream() -> AsyncIterator[str]:
        nonlocal after
        hub = live_hub(settings.redis_url)
        try:
            if after_step is not None and not last_event_id_header:
                after = await position_before_step(hub.client, run_id, after_step)
            yield "retry: 2000\n\n"
            async for event in hub.follow(run_id, after, finished=finished):
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                yield event.to_sse()
                if event.event == "done":
                    return
            if finished:
                # A finished run's stream is complete (or gone with Redis): say so, so the page stops listening.
                yield Event(id=after, event="done", data={"status": run.status}).to_sse()
        except (redis.RedisError, OSError):
            # Redis went away: end the stream; the browser reconnects with Last-Event-ID and catches up.
            return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: str, session: SessionDep) -> RunOut:
    """Ask the run to stop: a queued run is cancelled at once, a running one at its next step."""
    lookup_run(session, run_id)
    try:
        return RunOut.model_validate(runs.request_cancel(session=session, run_id=run_id))
    except runs.Conflict as exc:
        raise HTTPException(409, str(exc)) from exc


def conflict_to_http(action: Callable[[], Run]) -> Run:
    """Run a state change; a run in the wrong state is a 409 naming why."""
    try:
        return action()
    except runs.Conflict as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/runs/{run_id}/stop")
def stop_run(run_id: str, session: SessionDep) -> RunOut:
    """Stop and keep what it learned: a checkpoint and the adapter at the next step; the run ends `stopped`."""
    lookup_run(session, run_id)
    return RunOut.model_validate(conflict_to_http(lambda: runs.request_stop(session=session, run_id=run_id)))


def remove_run(*, session: SessionDep, settings: SettingsDep, run_id: str) -> None:
    """Delete a finished run: its rows (metrics, artifacts), its directory and its event stream."""
    lookup_run(session, run_id)
    conflict_to_http(lambda: runs.delete_run(session=session, run_id=run_id))
    remove_run_dir(settings, run_id)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        client.delete(stream_key(run_id))
        client.close()
    except redis.RedisError:
        pass  # a stream left behind expires with Redis's own trimming; the run is gone from the database


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a finished run with its files (409 while it is queued, running or interrupted)."""
    remove_run(session=session, settings=settings, run_id=run_id)
    return Response(status_code=204)


@router.post("/runs/{run_id}/archive")
def archive_run(run_id: str, session: SessionDep) -> RunOut:
    """Hide the run from the runs list and the pickers; nothing is deleted."""
    lookup_run(session, run_id)
    return RunOut.model_validate(runs.set_archived(session=session, run_id=run_id, archived=True))


@router.post("/runs/{run_id}/unarchive")
def unarchive_run(run_id: str, session: SessionDep) -> RunOut:
    """Bring an archived run back into the lists."""
    lookup_run(session, run_id)
    return RunOut.model_validate(runs.set_archived(session=session, run_id=run_id, archived=False))


def start_merge(*, session: SessionDep, run_id: str, dtype: str) -> Artifact:
    lookup_run(session, run_id)
    try:
        artifact, new = runs.request_merge(session=session, run_id=run_id, dtype=dtype)
    except runs.Conflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if new:
        enqueue_or_undo(session, artifact, lambda: enqueue_merge(artifact.id), "no merge was queued")
    return artifact


@router.post("/runs/{run_id}/merge", status_code=202)
def merge_run(run_id: str, session: SessionDep, request: MergeRequest | None = None) -> ArtifactOut:
    """Queue a merge of the run's adapter into full-precision base weights."""
    dtype = request.dtype if request else "auto"
    return artifact_out(start_merge(session=session, run_id=run_id, dtype=dtype))


@router.get("/runs/{run_id}/artifacts")
def list_artifacts(run_id: str, session: SessionDep) -> list[ArtifactOut]:
    """The run's adapter, merged model and checkpoints, with sizes and sha256."""
    lookup_run(session, run_id)
    return [artifact_out(artifact) for artifact in runs.list_artifacts(session=session, run_id=run_id)]


@router.get("/artifacts/{artifact_id}/download", response_model=None)
def download_artifact(
    artifact_id: str, request: Request, session: SessionDep, settings: SettingsDep, file: str | None = None
) -> Response:
    """The artifact as one streamed tar archive, or one of its files (`?file=`, with Range support)."""
    try:
        artifact = runs.get_artifact(session=session, artifact_id=artifact_id)
    except runs.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return download_response(artifact, settings, request, file)
