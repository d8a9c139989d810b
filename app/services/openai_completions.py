"""OpenAI's chat completions and completions, answered by a `generate` worker: the web checks the body
(app.services.openai_params), resolves the model (app.services.openai_models), queues the request within the
pending bound (app.queue), and follows the request's Redis Stream (app.playground), rendering its events as OpenAI's
objects: `chat.completion` / `text_completion` whole, or their chunks as server-sent events.

How messages are formatted: through the model's chat template, as the run trained (`chat_template` of its spec;
`auto`: the tokenizer's own, else chatml). A fine-tune trained on prompt/completion or text rows never saw a
template, so a chat request to it must be one user message, whose content is given to the model as the prompt
was in training, raw; anything more is refused naming `messages` (send it to `/v1/completions` instead).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from sqlalchemy.orm import Session

from app import playground
from app.config import Settings
from app.contracts.completions import (
    COMPLETION_EVENTS,
    FINAL_COMPLETION_EVENTS,
    CompletedEvent,
    CompletionJob,
    FailedEvent,
    PromptEvent,
)
from app.contracts.events import TokenEvent
from app.contracts.workers import WorkerRecord
from app.errors import DomainError, InvalidInput, NotFound
from app.events import follow
from app.queue import PENDING_KEY, PENDING_STALE_S, Queue, enqueue_completion, reaching_redis
from app.services.openai_models import resolve_model
from app.services.openai_params import Parsed
from app.workers import HEARTBEAT_S
from app.workers import PREFIX as WORKERS_PREFIX

Event = PromptEvent | TokenEvent | CompletedEvent | FailedEvent


@dataclass
class Started:
    id: str  # the request's id, which names its stream and OpenAI's `chatcmpl-`/`cmpl-` id
    job: CompletionJob
    chat: bool  # a chat completion (else a text completion)
    created: int


class WorkerFailed(DomainError):
    """The worker could not answer (FailedEvent), or none answered in time."""

    def __init__(self, event: FailedEvent) -> None:
        super().__init__(event.message)
        self.event = event


def _as_prompt(job: CompletionJob, model_id: str) -> CompletionJob:
    """A chat request to a fine-tune that trained without a template: its one user message as the prompt."""
    turns = job.messages or []
    if len(turns) != 1 or turns[0].role != "user":
        raise InvalidInput.fields(
            {
                "messages": f"{model_id} trained on prompt/completion rows, without a chat template: send one user "
                "message (given to it as the prompt was in training), or use /v1/completions"
            }
        )
    return job.model_copy(update={"messages": None, "prompt": turns[0].content})


def start(*, session: Session, settings: Settings, parsed: Parsed, chat: bool) -> Started:
    """Queue the request for the generate worker: NotFound for a model that does not answer, QueueFull (app.queue)
    when the pending bound is reached."""
    job = parsed.job
    target = resolve_model(session=session, settings=settings, model_id=job.model)
    if job.messages is not None and not target.chat:
        job = _as_prompt(job, job.model)
    request_id = uuid.uuid4().hex
    with reaching_redis("the request was not queued"):
        enqueue_completion(request_id, job, bound=settings.openai_pending_requests)
    return Started(id=request_id, job=job, chat=chat, created=int(time.time()))


async def events(
    client: aioredis.Redis, started: Started, gone: Callable[[], Awaitable[bool]] | None = None
) -> AsyncIterator[Event]:
    """The request's events as the worker publishes them, up to its last; a FailedEvent when nothing is heard
    for `playground.IDLE_S` (no generate worker running, or one that died). `gone`: whether the client hung up,
    asked between events, so a request nobody waits for any more stops being followed (the worker still answers
    it, and it counts against the bound until then). While a generate worker is alive, a request waits its turn
    behind the others queued, up to PENDING_STALE_S."""
    heard = time.monotonic()
    key = playground.stream_key(started.id)
    async for entry in follow(client, key, "0-0", until=FINAL_COMPLETION_EVENTS, block_ms=2_000):
        if entry is not None:
            heard = time.monotonic()
            yield cast(Event, COMPLETION_EVENTS[entry.event].model_validate(entry.data))
        elif gone is not None and await gone():
            return
        elif (quiet := time.monotonic() - heard) > playground.IDLE_S and (
            quiet > PENDING_STALE_S or not await generator_alive(client)
        ):
            await client.zrem(PENDING_KEY, started.id)  # given up: no longer counted against the bound
            message = (
                f"no answer for {quiet:.0f} s: is a generate worker running? "
                "(`loradeck up` starts one; `loradeck worker --queues generate`)"
            )
            yield FailedEvent(kind="server", message=message)
            return


async def generator_alive(client: aioredis.Redis) -> bool:
    """Whether a worker on the generate queue sent a heartbeat lately: while one does, a request waits its turn
    behind the others queued (up to PENDING_STALE_S) instead of being given up as unanswered."""
    async for key in client.scan_iter(match=WORKERS_PREFIX + "*", count=200):
        raw = await client.get(key)
        if raw is None:
            continue
        record = WorkerRecord.model_validate(json.loads(raw))
        if Queue.generate.value in record.queues and time.time() - record.seen < 3 * HEARTBEAT_S:
            return True
    return False


def failure(event: FailedEvent) -> Exception:
    """The domain error a worker's refusal stands for (the web's OpenAI handler gives it its status)."""
    if event.kind == "not_found":
        return NotFound(event.message)
    if event.kind == "invalid":
        return InvalidInput.fields({event.param or "messages": event.message})
    return WorkerFailed(event)


# --- OpenAI's objects
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _head(started: Started, *, chunk: bool) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if started.chat else "text_completion"
    prefix = "chatcmpl-" if started.chat else "cmpl-"
    return {"id": prefix + started.id, "object": kind, "created": started.created, "model": started.job.model,
            "system_fingerprint": None}  # fmt: skip


def whole(started: Started, done: CompletedEvent) -> dict[str, Any]:
    """The answer as one `chat.completion` or `text_completion`."""
    choices = []
    for index, choice in enumerate(done.choices):
        body: dict[str, Any] = {"index": index, "finish_reason": choice.finish_reason, "logprobs": None}
        if started.chat:
            body["message"] = {"role": "assistant", "content": choice.text, "refusal": None}
        else:
            body["text"] = choice.text
        choices.append(body)
    completion = sum(choice.tokens for choice in done.choices)
    return {**_head(started, chunk=False), "choices": choices, "usage": usage(done.prompt_tokens, completion)}


def chunk(
    started: Started, index: int, *, text: str | None = None, role: bool = False, finish: str | None = None
) -> dict[str, Any]:
    """One streamed chunk of choice `index`: its role (chat's first), a piece of text, or its finish_reason."""
    choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
    if started.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    return {**_head(started, chunk=True), "choices": [choice]}


def usage_chunk(started: Started, done: CompletedEvent) -> dict[str, Any]:
    """`stream_options.include_usage`: the last chunk, with no choices and the request's usage."""
    completion = sum(choice.tokens for choice in done.choices)
    return {**_head(started, chunk=True), "choices": [], "usage": usage(done.prompt_tokens, completion)}
