"""Live events: one Redis Stream per run.

The worker appends (`publish`); the web follows a stream for server-sent events (`follow`). Each
event's stream id is its SSE `id:`, so a client that reconnects with `Last-Event-ID` misses nothing.
The database keeps every metric, so losing Redis loses no data, only the live feed.

Publishing is idempotent: a reply lost with the connection (Redis stopping, a network cut) makes the client
send the command again (the worker's publisher does; so does redis-py where retries are set), and the event
must not appear twice. Each event goes out with its sender's id and number; a script in Redis appends a
number only past the last one it appended for that sender, in the same step, so a resend appends nothing.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from app.contracts.events import RUN_EVENTS, LiveEvent


def stream_key(run_id: str) -> str:
    return f"loradeck:run:{run_id}:events"


def control_channel(run_id: str) -> str:
    """The pub/sub channel that tells a training run's control thread its cancel or stop flag just changed."""
    return f"loradeck:run:{run_id}:control"


def nudge(redis_url: str, run_id: str) -> bool:
    """Tell the run's control thread to read its flags now (worker.engine.callbacks); False if Redis did not take
    it, which only delays the cancel or stop to the thread's next read of the database (FLAGS_FALLBACK_S)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.publish(control_channel(run_id), "flags")
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()


def senders_key(run_id: str) -> str:
    """The hash of the run stream's senders: the number of the last event each one appended."""
    return f"loradeck:run:{run_id}:events:senders"


# KEYS: the stream, its senders' hash. ARGV: sender, number, maxlen, event type, data. Nil when already there.
_APPEND_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return false end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[4], 'data', ARGV[5])
"""


# KEYS: the stream, its senders' hash. ARGV: sender, maxlen, then number, event type, data for each event, the
# numbers ascending. Appends the events past the sender's last number; returns how many it appended.
_APPEND_MANY_ONCE = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local appended = 0
for i = 3, #ARGV, 3 do
  local number = tonumber(ARGV[i])
  if number > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i + 1], 'data', ARGV[i + 2])
    last = number
    appended = appended + 1
  end
end
redis.call('HSET', KEYS[2], ARGV[1], last)
return appended
"""


class Sender:
    """One source of a run's events: numbers them, so that sending one again never appends it twice."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self._numbers = itertools.count(1)

    def next_number(self) -> int:
        return next(self._numbers)


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: dict[str, Any]

    def to_sse(self) -> str:
        return f"id: {self.id}\nevent: {self.event}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


def publish(
    client: redis.Redis, run_id: str, event: LiveEvent, *, maxlen: int, once: tuple[Sender, int] | None = None
) -> str | None:
    """Append one event to the run's stream, which keeps about `maxlen` of the newest; returns its stream id.

    `once` is (sender, the number it gave this event): sending the same number again, as a retry after a
    lost reply does, appends nothing and returns None. Without it the event is a sender's only one.
    """
    if RUN_EVENTS.get(event.type) is not type(event):
        raise ValueError(f"{type(event).__name__} is not a run event; run events are {', '.join(RUN_EVENTS)}")
    sender, number = once if once is not None else (Sender(), 1)
    data = json.dumps(event.data(), separators=(",", ":"))
    append = client.register_script(_APPEND_ONCE)  # EVALSHA, loading the script again after a Redis restart
    keys = [stream_key(run_id), senders_key(run_id)]
    stream_id = append(keys=keys, args=[sender.id, number, maxlen, event.type, data])
    if stream_id is None:
        return None
    return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)


def publish_many(
    client: redis.Redis, run_id: str, numbered: list[tuple[int, LiveEvent]], *, maxlen: int, sender: Sender
) -> int:
    """Append several events of one sender in one round trip, each (number, event) as `publish` with `once`
    would: a number sent before (a retry after a lost reply) appends nothing. Returns how many were appended."""
    args: list[Any] = [sender.id, maxlen]
    for number, event in numbered:
        if RUN_EVENTS.get(event.type) is not type(event):
            raise ValueError(f"{type(event).__name__} is not a run event; run events are {', '.join(RUN_EVENTS)}")
        args += [number, event.type, json.dumps(event.data(), separators=(",", ":"))]
    append = client.register_script(_APPEND_MANY_ONCE)
    return int(append(keys=[stream_key(run_id), senders_key(run_id)], args=args))


def decode_entry(entry_id: Any, fields: dict[Any, Any]) -> Event:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    decoded = {text(k): text(v) for k, v in fields.items()}
    return Event(id=text(entry_id), event=decoded.get("event", "log"), data=json.loads(decoded.get("data", "{}")))


async def follow(
    client: aioredis.Redis, key: str, after_id: str, *, until: tuple[str, ...] = (), block_ms: int = 15_000
) -> AsyncIterator[Event | None]:
    """Yield the events of stream `key` after `after_id`, up to one whose type is in `until` (else forever);
    None after each quiet `block_ms` (a heartbeat). The web's live hub fans one reader out per run; this
    serves a single reader, such as a playground request's page."""
    cursor = after_id or "0-0"
    while True:
        reply: Any = await client.xread({key: cursor}, block=block_ms, count=500)
        if not reply:
            yield None
            continue
        for _key, entries in reply:
            for entry_id, fields in entries:
                event = decode_entry(entry_id, fields)
                cursor = event.id
                yield event
                if event.event in until:
                    return


async def position_before_step(client: aioredis.Redis, run_id: str, step: int, *, page: int = 500) -> str:
    """A stream id from which following replays every metric past `step` (and a few before it, which the
    page skips by step): the newest metric event below `step`, found by reading the stream backwards.

    The page draws the stored history first; the database lags the stream by up to a flush interval, so
    following from "after the newest event when the page was drawn" would skip the points in that gap.
    """
    key = stream_key(run_id)
    upper = "+"
    while True:
        entries: Any = await client.xrevrange(key, max=upper, min="-", count=page)
        if not entries:
            return "0-0"
        for entry_id, fields in entries:
            event = decode_entry(entry_id, fields)
            if event.event == "metric" and int(event.data.get("step", 0)) < step:
                return event.id
        if len(entries) < page:
            return "0-0"
        upper = "(" + decode_entry(*entries[-1]).id
