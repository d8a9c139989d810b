"""Playground requests: one Redis Stream of text pieces per request, written by a `generate` worker.

The web validates a request, sends it to the `generate` queue (app.queue) and follows the request's
stream for the page's server-sent events. Nothing here is kept in the database: an answer lives in Redis
for an hour, long enough to reconnect and read it again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis

from app.events import Event, decode_entry

EVENT_TYPES = ("start", "token", "done", "error")
FINAL_EVENTS = ("done", "error")
KEEP_S = 3600


class PlaygroundError(ValueError):
    """A request the worker cannot answer, with what to do instead."""


def new_generation_id() -> str:
    return uuid.uuid4().hex[:16]


def stream_key(generation_id: str) -> str:
    return f"loradeck:playground:{generation_id}"


def publish(client: redis.Redis, generation_id: str, event: str, data: dict[str, Any]) -> None:
    if event not in EVENT_TYPES:
        raise ValueError(f"unknown playground event {event!r}; expected one of {EVENT_TYPES}")
    key = stream_key(generation_id)
    pipe = client.pipeline()
    pipe.xadd(key, {"event": event, "data": json.dumps(data, ensure_ascii=False, separators=(",", ":"))})
    pipe.expire(key, KEEP_S)
    pipe.execute()


async def follow(
    client: aioredis.Redis, generation_id: str, after_id: str = "0-0", *, block_ms: int = 15_000
) -> AsyncIterator[Event | None]:
    """The request's events after `after_id` up to its final one; None after each quiet `block_ms`."""
    key, cursor = stream_key(generation_id), after_id or "0-0"
    while True:
        reply: Any = await client.xread({key: cursor}, block=block_ms, count=200)
        if not reply:
            yield None
            continue
        for _key, entries in reply:
            for entry_id, fields in entries:
                event = decode_entry(entry_id, fields)
                cursor = event.id
                yield event
                if event.event in FINAL_EVENTS:
                    return
