"""The JSON API under /api/v1 for runs and artifacts (the README's API table is its contract). Each route reads
the request, calls one service function (app.services.runs) and answers; errors are mapped in app.web.errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import redis
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.events import position_before_step
from app.models import RunStatus
from app.services import checkpoints, runs, samples
from app.services.run_stream import run_stream
from app.web.api_models import (
    ArtifactOut,
    CheckpointOut,
    ExportRequest,
    MergeRequest,
    MetricOut,
    ResumeRequest,
    RunOut,
    SamplesOut,
    artifact_out,
)
from app.web.deps import RUN_SPEC_BODY, SessionDep, SettingsDep, read_json
from app.web.downloads import download_response
from app.web.live import live_hub, stream_error, stream_position

router = APIRouter(prefix="/api/v1", tags=["api"])
# Past any run's steps (max_steps <= 1e7), and inside the metrics table's step column (32-bit on PostgreSQL).
MAX_STEP = 2**31 - 1


@router.post("/runs", status_code=201, openapi_extra=RUN_SPEC_BODY)
async def create_run(request: Request, session: SessionDep, settings: SettingsDep) -> RunOut:
    """Create a run from a RunSpec and queue it for training."""
    body = await read_json(request)
    return RunOut.model_validate(runs.create_run(session=session, settings=settings, body=body))


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
    return RunOut.model_validate(runs.get_run(session=session, run_id=run_id))


@router.get("/runs/{run_id}/metrics", response_model=list[MetricOut])
def get_metrics(
    run_id: str,
    session: SessionDep,
    after_step: Annotated[int, Query(ge=-1, le=MAX_STEP)] = -1,
    max_points: Annotated[int | None, Query(ge=10, le=100_000)] = None,
) -> JSONResponse:
    """The run's metric points so far, by step; `after_step` returns only the newer ones, `max_points`
    averages a long history into that many buckets for drawing (the database keeps every point)."""
    points = runs.metric_points(session=session, run_id=run_id, after_step=after_step, max_points=max_points)
    return JSONResponse(points)


@router.get("/runs/{run_id}/log")
def get_log(
    run_id: str, session: SessionDep, settings: SettingsDep, lines: Annotated[int, Query(ge=1, le=5000)] = 200
) -> dict[str, list[str]]:
    """The last lines of the run's training log."""
    return {"lines": runs.run_log(session=session, settings=settings, run_id=run_id, lines=lines)}


@router.get("/runs/{run_id}/samples")
def get_samples(
    run_id: str,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=samples.MAX_SAMPLES)] = 20,
) -> SamplesOut:
    """GRPO: what the policy wrote while training, the newest `limit` events oldest first: every few logging steps
    one prompt, its reference answer, and a few completions, each with its weighted reward and each reward
    function's score (live, the `samples` event). Empty for other objectives and before the first."""
    found = samples.latest_samples(session=session, settings=settings, run_id=run_id, limit=limit)
    return SamplesOut(samples=found)


@router.get("/runs/{run_id}/checkpoints")
def get_checkpoints(run_id: str, session: SessionDep, settings: SettingsDep) -> list[CheckpointOut]:
    """The run's checkpoints (to resume from, or to use as the adapter), oldest first, with step and size."""
    found = runs.run_checkpoints(session=session, settings=settings, run_id=run_id)
    return [CheckpointOut(name=c.name, step=c.step, size_bytes=c.size_bytes, complete=c.complete) for c in found]


@router.post("/runs/{run_id}/checkpoints/{step}/resume", status_code=202)
def resume_run(
    run_id: str,
    step: Annotated[int, Path(ge=1, le=MAX_STEP)],
    session: SessionDep,
    settings: SettingsDep,
    request: ResumeRequest | None = None,
) -> RunOut:
    """Resume a cancelled, failed or stopped run from one of its checkpoints: a new attempt of the same run,
    queued again (its points and checkpoints past the step, its adapter and what was made of it go)."""
    max_steps = request.max_steps if request else None
    resumed = checkpoints.resume_from_checkpoint(
        session=session, settings=settings, run_id=run_id, step=step, max_steps=max_steps
    )
    return RunOut.model_validate(resumed)


@router.post("/runs/{run_id}/checkpoints/{step}/use-as-adapter", status_code=201)
def use_checkpoint_as_adapter(
    run_id: str, step: Annotated[int, Path(ge=1, le=MAX_STEP)], session: SessionDep, settings: SettingsDep
) -> ArtifactOut:
    """Make a finished run's checkpoint the run's adapter artifact: merge, GGUF export, the playground and the
    adapter's download then work on it (a merged model or export of an earlier adapter is deleted)."""
    adopted = checkpoints.use_checkpoint_as_adapter(session=session, settings=settings, run_id=run_id, step=step)
    return artifact_out(adopted)


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
    """Server-sent events of the run: status, params, metric, log, checkpoint, artifact, evaluating,
    evaluation, done. A metric event also carries the elapsed time and the ETA as the page shows them. While a
    merge or an export of the run is being made, the stream goes on past the run's end with its progress, and
    says `done` once none is left.

    Resumes after `Last-Event-ID` (or `?last_event_id=`); `?after_step=N` starts just before the metric
    points past step N, for a page that has drawn the stored history up to N."""
    view = run_stream(session=session, run_id=run_id)
    finished = view.over
    session.close()
    after = stream_position(last_event_id_header or last_event_id)

    async def stream() -> AsyncIterator[str]:
        nonlocal after
        hub = live_hub(settings.redis_url)
        yield "retry: 2000\n\n"
        try:
            if after_step is not None and not last_event_id_header:
                after = await position_before_step(hub.client, run_id, after_step)
            view.last_id = after
            async for event in hub.follow(run_id, after, finished=finished):
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                sent, ends = view.shape(event)
                for shaped in sent:
                    yield shaped.to_sse()
                if ends:
                    return
            if finished:
                # A finished run's stream is complete (or gone with Redis): say so, so the page stops listening.
                yield view.done().to_sse()
        except (redis.RedisError, OSError) as exc:
            # Say why the stream ends (no id: the browser reconnects with the last event's and catches up).
            yield stream_error(exc)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: str, session: SessionDep) -> RunOut:
    """Ask the run to stop: a queued run is cancelled at once, a running one at its next step."""
    return RunOut.model_validate(runs.cancel_run(session=session, run_id=run_id))


@router.post("/runs/{run_id}/stop")
def stop_run(run_id: str, session: SessionDep) -> RunOut:
    """Stop and keep what it learned: a checkpoint and the adapter at the next step; the run ends `stopped`."""
    return RunOut.model_validate(runs.stop_run(session=session, run_id=run_id))


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(run_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a finished run with its files (409 while it is queued, running or interrupted)."""
    runs.delete_run(session=session, settings=settings, run_id=run_id)
    return Response(status_code=204)


@router.post("/runs/{run_id}/archive")
def archive_run(run_id: str, session: SessionDep) -> RunOut:
    """Hide the run from the runs list and the pickers; nothing is deleted."""
    return RunOut.model_validate(runs.set_archived(session=session, run_id=run_id, archived=True))


@router.post("/runs/{run_id}/unarchive")
def unarchive_run(run_id: str, session: SessionDep) -> RunOut:
    """Bring an archived run back into the lists."""
    return RunOut.model_validate(runs.set_archived(session=session, run_id=run_id, archived=False))


@router.post("/runs/{run_id}/merge", status_code=202)
def merge_run(run_id: str, session: SessionDep, request: MergeRequest | None = None) -> ArtifactOut:
    """Queue a merge of the run's adapter into full-precision base weights."""
    dtype = request.dtype if request else "auto"
    return artifact_out(runs.start_merge(session=session, run_id=run_id, dtype=dtype))


@router.post("/runs/{run_id}/export", status_code=202)
def export_run(run_id: str, session: SessionDep, request: ExportRequest | None = None) -> ArtifactOut:
    """Queue a GGUF export of the run's merged model (merged first when needed), for llama.cpp and Ollama: one
    .gguf with the tokenizer and chat template inside and a Modelfile, offered once llama.cpp itself has loaded
    it and matched transformers on the run's own prompts."""
    gguf_type = request.type if request else ExportRequest().type
    return artifact_out(runs.start_export(session=session, run_id=run_id, gguf_type=gguf_type))


@router.get("/runs/{run_id}/artifacts")
def list_artifacts(run_id: str, session: SessionDep) -> list[ArtifactOut]:
    """The run's adapter, merged model and GGUF exports, with sizes and sha256."""
    return [artifact_out(artifact) for artifact in runs.list_artifacts(session=session, run_id=run_id)]


@router.get("/artifacts/{artifact_id}/download", response_model=None)
def download_artifact(
    artifact_id: str, request: Request, session: SessionDep, settings: SettingsDep, file: str | None = None
) -> Response:
    """The artifact as one streamed tar archive, or one of its files (`?file=`, with Range support)."""
    artifact = runs.get_artifact(session=session, artifact_id=artifact_id)
    return download_response(artifact, settings, request, file)
