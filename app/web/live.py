"""Live feeds: one Redis read loop per run in this web process, shared by every viewer of that run.

Two hundred people watching one run cost one blocking XREAD, not two hundred. A viewer first catches up
from its own position with XRANGE, then takes the shared feed's events, skipping what it already sent.

A position the stream cannot have given (garbage, or past its newest event: ids from a Redis that was since
emptied) reads from the start: the page skips points it has drawn. A viewer the feed cannot serve any longer
(Redis went away, or it fell too far behind) is told why (`FeedLost`), so its stream says so before ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis

from app.events import Event, decode_entry, stream_key

QUEUE_LIMIT = 5000  # a viewer this far behind is dropped; its browser reconnects and catches up
IDLE_CLOSE_S = 30.0
# Connections of one web process to Redis: each run watched holds one in its blocking XREAD, and each viewer
# borrows one per catch-up read. Past the cap a read waits for a free one (up to POOL_WAIT_S) instead of
# failing: redis-py's plain pool raises "Too many connections" at 100, which ended every viewer of a feed.
POOL_SIZE = 256
POOL_WAIT_S = 30.0
STREAM_ID = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")


class FeedLost(redis.ConnectionError):
    """The shared feed can no longer serve this viewer; the message says why."""


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def stream_position(value: str | None) -> str:
    """A Last-Event-ID as a position to read after: a stream id as Redis writes them, else the start."""
    return value if value and STREAM_ID.fullmatch(value) else "0-0"


class RunFeed:
    """Reads one run's stream and hands every new event to each subscribed viewer's queue."""

    def __init__(self, client: aioredis.Redis, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.viewers: set[asyncio.Queue[Event | FeedLost]] = set()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.task is None or self.task.done():
            newest: Any = await self.client.xrevrange(stream_key(self.run_id), count=1)
            cursor = decode_entry(*newest[0]).id if newest else "0-0"
            self.task = asyncio.create_task(self._read(cursor))

    async def _read(self, cursor: str) -> None:
        key = stream_key(self.run_id)
        idle_since: float | None = None
        try:
            while True:
                reply: Any = await self.client.xread({key: cursor}, block=5000, count=500)
                for _key, entries in reply or []:
                    for entry in entries:
                        event = decode_entry(*entry)
                        cursor = event.id
                        for queue in list(self.viewers):
                            if queue.qsize() >= QUEUE_LIMIT:
                                self.viewers.discard(queue)
                                queue.put_nowait(FeedLost("this viewer fell too far behind; reconnect to catch up"))
                            else:
                                queue.put_nowait(event)
                loop = asyncio.get_running_loop()
                if self.viewers:
                    idle_since = None
                elif idle_since is None:
                    idle_since = loop.time()
                elif loop.time() - idle_since > IDLE_CLOSE_S:
                    return
        except (redis.RedisError, OSError) as exc:
            for queue in list(self.viewers):  # Redis went away: viewers reconnect and catch up
                queue.put_nowait(FeedLost(f"the live feed lost Redis ({exc}); reconnect to catch up"))
            self.viewers.clear()


class LiveHub:
    """The feeds of one event loop, over one Redis connection pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        # No read timeout: the feed's XREAD blocks for seconds on purpose (redis-py 8 defaults to 5 s).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_timeout=None
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self.feeds: dict[str, RunFeed] = {}

    async def follow(self, run_id: str, after: str, *, finished: bool) -> AsyncIterator[Event | None]:
        """The run's events after `after`: first those already in the stream, then new ones as they come.
        None is a heartbeat (nothing new for a while). A finished run's stream ends after its backlog; FeedLost
        is raised when the shared feed stops serving this viewer."""
        queue: asyncio.Queue[Event | FeedLost] = asyncio.Queue()
        feed = self.feeds.setdefault(run_id, RunFeed(self.client, run_id))
        if not finished:
            feed.viewers.add(queue)  # before catching up: nothing published from now on can be missed
            await feed.start()
        try:
            sent = stream_position(after)
            newest: Any = await self.client.xrevrange(stream_key(run_id), count=1)
            if not newest or _order(sent) > _order(decode_entry(*newest[0]).id):
                sent = "0-0"  # past the end: not a position this stream gave
            while True:  # catch up in pages
                backlog: Any = await self.client.xrange(stream_key(run_id), min=f"({sent}", max="+", count=1000)
                if not backlog:
                    break
                for entry in backlog:
                    event = decode_entry(*entry)
                    sent = event.id
                    yield event
            if finished:
                return
            while True:
                try:
                    item: Event | FeedLost = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    yield None
                    continue
                if isinstance(item, FeedLost):
                    raise item
                if _order(item.id) > _order(sent):
                    sent = item.id
                    yield item
        finally:
            feed.viewers.discard(queue)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LiveHub] = weakref.WeakKeyDictionary()


def live_hub(url: str) -> LiveHub:
    """This event loop's hub for the Redis at `url` (a test client may run several loops, and the settings'
    URL may change between tests; each pair gets its own)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.url != url:
        hub = _hubs[loop] = LiveHub(url)
    return hub


async def close_hubs() -> None:
    for hub in list(_hubs.values()):
        for feed in hub.feeds.values():
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(BaseException):
                    await feed.task
        await hub.client.aclose()
    _hubs.clear()


def stream_error(exc: BaseException) -> str:
    """An `error` event saying why a stream ends early. It has no id, so the browser reconnects from the last
    event it had, and the page fetches what it missed."""
    why = str(exc) if isinstance(exc, FeedLost) else f"the live stream cannot read Redis ({exc}); reconnect to go on"
    return f"event: error\ndata: {json.dumps({'message': why})}\n\n"
