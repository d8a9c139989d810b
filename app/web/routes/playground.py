"""The playground: a prompt answered by a run's base and its adapter (or a checkpoint, or the merged model)
side by side, streamed token by token. Generation runs on a `generate` worker, never in the web process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from app import playground, runs
from app.dataset_shapes import first_row_shape
from app.events import Event, follow
from app.models import ArtifactKind, ArtifactStatus, Run, RunStatus
from app.queue import enqueue_generation
from app.run_files import checkpoints
from app.schemas import PlaygroundRequest
from app.web.deps import SessionDep, SettingsDep
from app.web.live import live_hub
from app.web.routes.api import lookup_run
from app.web.routes.pages import render

router = APIRouter()


def choices(session: SessionDep, settings: SettingsDep, run_id: str) -> list[dict[str, str]]:
    """What can answer beside the base: the adapter of a succeeded run, its checkpoints, its merged model."""
    run = lookup_run(session, run_id)
    found = []
    if run.status == RunStatus.succeeded:
        found.append({"value": "adapter", "label": "adapter (the run's result)"})
    found += [{"value": c["name"], "label": f"checkpoint of step {c['step']}"} for c in checkpoints(settings, run_id)]
    merged = [
        a
        for a in runs.list_artifacts(session=session, run_id=run_id)
        if a.kind == ArtifactKind.merged and a.status == ArtifactStatus.ready
    ]
    if merged:
        found.append({"value": "merged", "label": "merged model"})
    return found


def trained_with_chat(spec: dict[str, Any]) -> bool:
    """Whether the run's rows went through the chat template: messages rows do, prompt/completion and text
    rows do not. The playground prompts the same way by default, so the adapter sees what it learned."""
    return first_row_shape(str(spec.get("dataset", ""))) == "messages"


def eval_examples(run: Run) -> list[dict[str, str]]:
    """Eval rows with their expected answers, for "Try an eval row": those the evaluation answered."""
    examples = (run.evaluation or {}).get("examples") or []
    return [{"prompt": e["prompt"], "expected": e["expected"]} for e in examples if "prompt" in e and "expected" in e]


@router.post("/api/v1/playground", status_code=202, tags=["api"])
def start_generation(body: PlaygroundRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Queue a prompt for the run's base and the chosen model; follow `events` for the text as it comes."""
    offered = [choice["value"] for choice in choices(session, settings, body.run_id)]
    if body.compare not in offered:
        have = ", ".join(offered) or "nothing yet (wait for a checkpoint or the end of the run)"
        raise HTTPException(409, f"compare: this run has no {body.compare}; it has {have}")
    if body.chat is None:
        body = body.model_copy(update={"chat": trained_with_chat(lookup_run(session, body.run_id).spec)})
    generation_id = playground.new_generation_id()
    try:
        # From now on its events page knows the id, and answers 404 for any other.
        with redis.Redis.from_url(settings.redis_url, socket_timeout=5) as client:
            client.set(playground.known_key(generation_id), 1, ex=playground.KEEP_S)
        enqueue_generation(generation_id, body.model_dump())
    except Exception as exc:  # Redis down: say so rather than leave the page waiting
        raise HTTPException(503, f"the generate queue is unreachable ({type(exc).__name__}); is Redis up?") from exc
    return {"id": generation_id, "events": f"/api/v1/playground/{generation_id}/events"}


@router.get("/api/v1/playground/{generation_id}/events", tags=["api"])
async def generation_events(generation_id: str, request: Request, settings: SettingsDep) -> StreamingResponse:
    """Server-sent events of one playground request: start (the sides), token (side, text), done or error."""
    unknown = HTTPException(404, f"no playground request with id {generation_id} (answers are kept an hour)")
    if not generation_id.isalnum() or len(generation_id) > 32:
        raise unknown
    after = request.headers.get("Last-Event-ID", "0-0")
    hub = live_hub(settings.redis_url)
    key = playground.stream_key(generation_id)
    try:
        if not await hub.client.exists(key, playground.known_key(generation_id)):
            raise unknown
    except (redis.RedisError, OSError) as exc:
        raise HTTPException(503, f"Redis is unreachable, so the answer cannot be read: {exc}") from exc

    async def stream() -> AsyncIterator[str]:
        heard = time.monotonic()
        try:
            yield "retry: 2000\n\n"
            async for event in follow(hub.client, key, after, until=playground.FINAL_EVENTS, block_ms=5_000):
                if event is not None:
                    heard = time.monotonic()
                    yield event.to_sse()
                elif time.monotonic() - heard > playground.IDLE_S:
                    message = (
                        f"no answer for {playground.IDLE_S:.0f} s: is a generate worker running? "
                        "(`loradeck up` starts one; `loradeck worker --queues generate`)"
                    )
                    yield Event(id=after, event="error", data={"message": message}).to_sse()
                    return
                else:
                    yield ": keep-alive\n\n"
        except (redis.RedisError, OSError):
            return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/runs/{run_id}/playground", response_class=HTMLResponse, include_in_schema=False)
def playground_page(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Prompt box, sampling settings, and the base's answer beside the adapter's as they stream in."""
    run = lookup_run(session, run_id)
    defaults = PlaygroundRequest(run_id=run.id, prompt="x", chat=trained_with_chat(run.spec))
    context = {
        "run": run,
        "choices": choices(session, settings, run_id),
        "defaults": defaults,
        "eval_examples": eval_examples(run),
        "eval_max_new_tokens": run.spec.get("eval_max_new_tokens", defaults.max_new_tokens),
    }
    return render(request, "playground.html", context)
