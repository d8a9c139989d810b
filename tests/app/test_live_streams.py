"""A run's live stream against odd positions and many viewers, through uvicorn and a real Redis: every viewer
gets the run's events and a closing `done`, whatever `Last-Event-ID` it came back with.

The worker's side is played by `app.events.publish` (what the worker's publisher calls) and the claim by the
run's row set to running, so each test decides when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import update

from app.contracts.events import DoneEvent, MetricEvent, StatusEvent
from app.events import publish
from app.models import Run, RunStatus
from tests.sse import Event, parse_events

BAD_IDS = ("abc", "-1", "$", "0-0-0", "1-2-3", "9" * 40)
BEYOND_THE_END = "9999999999999-0"


@pytest.fixture
def live_run(web_url: str, redis_url: str) -> Iterator[tuple[str, redis.Redis]]:
    """A run that is training (as far as the stream can tell) with three points in its stream."""
    from app.db import get_sessionmaker

    run = httpx.post(web_url + "/api/v1/runs", json={"max_steps": 50}, timeout=30).json()
    with get_sessionmaker()() as session:
        session.execute(update(Run).where(Run.id == run["id"]).values(status=RunStatus.running))
        session.commit()
    client = redis.Redis.from_url(redis_url)
    publish(client, run["id"], StatusEvent(status="running"), maxlen=1000)
    for step in (1, 2, 3):
        publish(client, run["id"], MetricEvent(step=step, time=step, loss=2.0), maxlen=1000)
    yield run["id"], client
    client.close()


def finish(run_id: str, client: redis.Redis) -> None:
    """The rest of the run as its worker ends it: two more points, the final status and `done`."""
    from app.db import get_sessionmaker

    for step in (4, 5):
        publish(client, run_id, MetricEvent(step=step, time=step, loss=1.0), maxlen=1000)
    with get_sessionmaker()() as session:
        session.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.succeeded))
        session.commit()
    publish(client, run_id, StatusEvent(status="succeeded"), maxlen=1000)
    publish(client, run_id, DoneEvent(status="succeeded"), maxlen=1000)


async def read_stream(client: httpx.AsyncClient, url: str, last_event_id: str, *, limit_s: float) -> list[Event]:
    """Every event until the stream ends (or `limit_s` passes: then the events so far, without `done`)."""
    events: list[Event] = []

    async def read_incrementally() -> None:
        async with client.stream("GET", url, headers={"Last-Event-ID": last_event_id}) as response:
            assert response.status_code == 200, await response.aread()
            buffer: list[str] = []
            async for line in response.aiter_lines():
                buffer.append(line)
                if line == "":
                    events.extend(parse_events(buffer))
                    buffer.clear()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read_incrementally(), timeout=limit_s)
    return events


def steps(events: list[Event]) -> list[int]:
    return [event.data["step"] for event in events if event.name == "metric"]


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


def test_an_id_past_the_streams_end_reads_the_live_run_from_the_start_and_ends_with_done(
    web_url: str, live_run: tuple[str, redis.Redis]
) -> None:
    run_id, client = live_run
    url = f"{web_url}/api/v1/runs/{run_id}/events"

    async def scenario() -> list[Event]:
        async with httpx.AsyncClient(timeout=30) as http:
            viewer = asyncio.create_task(read_stream(http, url, BEYOND_THE_END, limit_s=20))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(finish, run_id, client)
            return await viewer

    events = asyncio.run(scenario())
    assert steps(events) == [1, 2, 3, 4, 5]
    assert names(events)[-1] == "done"


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_a_garbage_id_reads_a_finished_run_from_the_start_and_ends_with_done(
    web_url: str, live_run: tuple[str, redis.Redis], bad_id: str
) -> None:
    run_id, client = live_run
    finish(run_id, client)

    async def scenario() -> list[Event]:
        async with httpx.AsyncClient(timeout=30) as http:
            return await read_stream(http, f"{web_url}/api/v1/runs/{run_id}/events", bad_id, limit_s=20)

    events = asyncio.run(scenario())
    assert steps(events) == [1, 2, 3, 4, 5]
    assert names(events)[-1] == "done"


def test_two_hundred_viewers_after_streams_with_bad_ids_each_get_every_event_and_done(
    web_url: str, live_run: tuple[str, redis.Redis]
) -> None:
    run_id, client = live_run
    url = f"{web_url}/api/v1/runs/{run_id}/events"

    async def scenario() -> list[list[Event]]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            # Streams that once stayed open for ever, or ended at once, come first and are dropped midway.
            stale = [
                asyncio.create_task(read_stream(http, url, bad, limit_s=2)) for bad in (*BAD_IDS, BEYOND_THE_END) * 5
            ]
            await asyncio.gather(*stale)
            viewers = [asyncio.create_task(read_stream(http, url, "", limit_s=90)) for _ in range(200)]
            await asyncio.sleep(3.0)
            await asyncio.to_thread(finish, run_id, client)
            return await asyncio.gather(*viewers)

    seen = asyncio.run(scenario())
    short = [i for i, events in enumerate(seen) if steps(events) != [1, 2, 3, 4, 5] or names(events)[-1:] != ["done"]]
    assert short == [], f"{len(short)} of 200 viewers missed events or done, e.g. {names(seen[short[0]])}"
