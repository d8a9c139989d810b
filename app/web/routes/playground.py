"""The playground: a prompt answered by a run's base and its adapter (or a checkpoint, or the merged model)
side by side, streamed token by token (app.services.playground queues it on a `generate` worker)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from app import playground
from app.contracts.events import FINAL_PLAYGROUND_EVENTS, ErrorEvent
from app.contracts.playground import PlaygroundRequest
from app.events import Event, follow
from app.services import playground as service
from app.services import runs
from app.web.deps import SessionDep, SettingsDep, render
from app.web.live import live_hub

router = APIRouter()


@router.post("/api/v1/playground", status_code=202, tags=["api"])
def start_generation(body: PlaygroundRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Queue a prompt, or a conversation (`messages`), for the run's base and the chosen model; follow `events`
    for the text as it comes."""
    started = service.start_generation(session=session, settings=settings, request=body)
    return {"id": started.id, "events": started.events}


@router.get("/api/v1/playground/{generation_id}/events", tags=["api"])
async def generation_events(generation_id: str, request: Request, settings: SettingsDep) -> StreamingResponse:
    """Server-sent events of one playground request: start (the sides), token (side, text), done or error."""
    after = request.headers.get("Last-Event-ID", "0-0")
    hub = live_hub(settings.redis_url)
    key = await service.generation_stream(hub.client, generation_id)

    async def stream() -> AsyncIterator[str]:
        heard = time.monotonic()
        try:
            yield "retry: 2000\n\n"
            async for event in follow(hub.client, key, after, until=FINAL_PLAYGROUND_EVENTS, block_ms=5_000):
                if event is not None:
                    heard = time.monotonic()
                    yield event.to_sse()
                elif time.monotonic() - heard > playground.IDLE_S:
                    message = (
                        f"no answer for {playground.IDLE_S:.0f} s: is a generate worker running? "
                        "(`loradeck up` starts one; `loradeck worker --queues generate`)"
                    )
                    yield Event(id=after, event=ErrorEvent.type, data=ErrorEvent(message=message).data()).to_sse()
                    return
                else:
                    yield ": keep-alive\n\n"
        except (redis.RedisError, OSError):
            return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/runs/{run_id}/playground", response_class=HTMLResponse, include_in_schema=False)
def playground_page(request: Request, run_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Prompt box (a chat for a run trained on messages), sampling settings, and the base's answer beside the
    adapter's as they stream in."""
    run = runs.get_run(session=session, run_id=run_id)
    defaults = service.defaults_for(run)
    context = {
        "run": run,
        "choices": service.choices(session=session, settings=settings, run_id=run_id),
        "defaults": defaults,
        "bounds": service.ChatBounds(),
        "eval_examples": service.eval_examples(run),
        "eval_max_new_tokens": run.spec.get("eval_max_new_tokens", defaults.max_new_tokens),
    }
    return render(request, "playground.html", context)
