"""The run's event stream against a real Redis: publishing, following, and where a page resumes."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from app.contracts.events import RUN_EVENTS, DoneEvent, MetricEvent, StatusEvent, TokenEvent
from app.events import Event, follow, position_before_step, publish, stream_key


def _fill(client: redis.Redis, run_id: str) -> None:
    client.delete(f"loradeck:run:{run_id}:events")
    publish(client, run_id, StatusEvent(status="running"), maxlen=10_000)
    for step in range(1, 1201):
        publish(client, run_id, MetricEvent(step=step, kind="train", time=step, loss=1.0), maxlen=10_000)
        if step % 400 == 0:
            publish(client, run_id, MetricEvent(step=step, kind="eval", time=step, loss=2.0), maxlen=10_000)
    publish(client, run_id, DoneEvent(status="succeeded"), maxlen=10_000)


async def _collect(url: str, run_id: str, after: str) -> list[Event]:
    client = aioredis.Redis.from_url(url)
    events = []
    async for event in follow(client, stream_key(run_id), after, block_ms=1):
        if event is None:
            break
        events.append(event)
    await client.aclose()
    return events


async def _position(url: str, run_id: str, step: int) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        return await position_before_step(client, run_id, step)
    finally:
        await client.aclose()


def test_following_from_a_step_replays_every_later_point_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _fill(client, "s1")
    for drawn_up_to in (0, 1, 30, 799, 800, 1199):
        position = asyncio.run(_position(redis_url, "s1", drawn_up_to))
        events = asyncio.run(_collect(redis_url, "s1", position))
        train = [e.data["step"] for e in events if e.event == "metric" and e.data["kind"] == "train"]
        # Starts right after the newest point below the drawn one: the drawn step itself (skipped by the
        # page), then every later point; nothing past it is missed.
        assert train == list(range(max(drawn_up_to, 1), 1201))
        assert events[-1].event == "done"


def test_publish_refuses_what_is_not_a_run_event(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(ValueError, match="TokenEvent is not a run event"):
        publish(client, "s2", TokenEvent(side=0, text="a playground's token"), maxlen=10)
    assert client.xlen(stream_key("s2")) == 0


def test_an_event_with_a_field_its_type_lacks_is_refused_where_it_is_made() -> None:
    with pytest.raises(ValidationError, match="stepp"):
        MetricEvent(stepp=3, time=1.0)  # type: ignore[call-arg]
    assert set(RUN_EVENTS) == {
        "status", "params", "metric", "samples", "log", "checkpoint", "artifact", "evaluating", "evaluation", "done"
    }  # fmt: skip
