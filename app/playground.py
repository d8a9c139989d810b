"""Playground requests: one Redis Stream of text pieces per request, written by a `generate` worker.

The web validates a request, sends it to the `generate` queue (app.queue) and follows the request's
stream for the page's server-sent events. Nothing here is kept in the database: an answer lives in Redis
for an hour, long enough to reconnect and read it again.
"""

from __future__ import annotations

import json
import uuid

import redis

from app.contracts.events import PLAYGROUND_EVENTS, LiveEvent

KEEP_S = 3600
# A request nothing was heard of for this long is given up (its task expires from the queue after 60 s).
IDLE_S = 90.0


class PlaygroundError(ValueError):
    """A request the worker cannot answer, with what to do instead."""


def new_generation_id() -> str:
    return uuid.uuid4().hex[:16]


def stream_key(generation_id: str) -> str:
    return f"loradeck:playground:{generation_id}"


def known_key(generation_id: str) -> str:
    """Set by the web when it queues the request: its events page answers for known ids only."""
    return f"loradeck:playground:{generation_id}:known"


def publish(
    client: redis.Redis, generation_id: str, event: LiveEvent, kinds: dict[str, type[LiveEvent]] = PLAYGROUND_EVENTS
) -> None:
    """Add `event` to the request's stream; `kinds`: the events its reader expects (the playground's, or those of
    an OpenAI completion, app.contracts.completions)."""
    if kinds.get(event.type) is not type(event):
        raise ValueError(f"{type(event).__name__} is not an event of this stream; they are {', '.join(kinds)}")
    key = stream_key(generation_id)
    pipe = client.pipeline()
    data = json.dumps(event.data(), ensure_ascii=False, separators=(",", ":"))
    pipe.xadd(key, {"event": event.type, "data": data})
    pipe.expire(key, KEEP_S)
    pipe.execute()
