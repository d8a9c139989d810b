"""OpenAI's API under `/v1` (see app.web.routes.openai_api): models, and chat completions and completions
through the generate worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.config import Settings
from app.contracts.completions import CompletedEvent, FailedEvent, PromptEvent
from app.contracts.events import TokenEvent
from app.queue import QueueFull
from app.services import openai_completions as completions
from app.services import openai_models
from app.services.openai_params import parse_body
from app.web.deps import SessionDep, SettingsDep
from app.web.live import live_hub
from app.web.openai_errors import OpenAIError, error_body

router = APIRouter(prefix="/v1", tags=["openai"])
# Read as it came: app.services.openai_params names each parameter it cannot use, as OpenAI does.
OpenAIBody = Annotated[Any, Body()]


@router.get("/models")
def list_models(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """The base models and every fine-tuned model (`ft:...`) loradeck answers with."""
    return {"object": "list", "data": openai_models.list_models(session=session, settings=settings)}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """One model, a checkpoint (`ft:...:ckpt-step-<n>`) included."""
    return openai_models.get_model(session=session, settings=settings, model_id=model_id)


@router.delete("/models/{model_id:path}")
def delete_model(model_id: str, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Delete a fine-tuned model: its adapter and merged model go; the run stays, with its checkpoints."""
    return openai_models.delete_model(session=session, settings=settings, model_id=model_id)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request, session: SessionDep, settings: SettingsDep, body: OpenAIBody = None
) -> dict[str, Any] | StreamingResponse:
    """A conversation answered by a base or fine-tuned model, whole or streamed (`stream: true`)."""
    return await _answer(request, session, settings, body, chat=True)


@router.post("/completions", response_model=None)
async def text_completions(
    request: Request, session: SessionDep, settings: SettingsDep, body: OpenAIBody = None
) -> dict[str, Any] | StreamingResponse:
    """A prompt continued, as it is (no chat template), whole or streamed."""
    return await _answer(request, session, settings, body, chat=False)


async def _answer(
    request: Request, session: Session, settings: Settings, body: Any, *, chat: bool
) -> dict[str, Any] | StreamingResponse:
    parsed = parse_body(body, chat=chat)
    try:
        started = await run_in_threadpool(
            completions.start, session=session, settings=settings, parsed=parsed, chat=chat
        )
    except QueueFull as exc:
        raise OpenAIError(429, str(exc), code="rate_limit_exceeded") from exc
    feed = completions.events(live_hub(settings.redis_url).client, started, request.is_disconnected)
    # The first event says the model is loaded and the prompt fits, or why not: an error is still an HTTP status.
    first = await anext(feed, None)
    if first is None:
        raise OpenAIError(499, "the client hung up before the answer came")
    if isinstance(first, FailedEvent):
        raise completions.failure(first)
    if not parsed.stream:
        async for event in feed:
            if isinstance(event, FailedEvent):
                raise completions.failure(event)
            if isinstance(event, CompletedEvent):
                return completions.whole(started, event)
        raise OpenAIError(499, "the client hung up before the answer came")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    chunks = _chunks(started, first, feed, include_usage=parsed.include_usage)
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _chunks(
    started: completions.Started, first: Any, feed: AsyncIterator[Any], *, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's stream: per choice a first chunk with the role (chat), its pieces of text, a chunk with its
    finish_reason; with include_usage a last chunk with the usage; then `[DONE]`."""
    assert isinstance(first, PromptEvent)
    for index in range(started.job.n):
        if started.chat:
            yield _sse(completions.chunk(started, index, role=True))
    async for event in feed:
        if isinstance(event, TokenEvent):
            yield _sse(completions.chunk(started, event.side, text=event.text))
        elif isinstance(event, CompletedEvent):
            for index, choice in enumerate(event.choices):
                yield _sse(completions.chunk(started, index, finish=choice.finish_reason))
            if include_usage:
                yield _sse(completions.usage_chunk(started, event))
            break
        elif isinstance(event, FailedEvent):
            # Past the status line: OpenAI's stream carries the error as an event, which the SDK raises.
            yield _sse(error_body(500, event.message, param=event.param))
            return
    yield "data: [DONE]\n\n"
