"""Live feeds: one Redis read loop per run in this web process, shared by every viewer of that run.

Two hundred people watching one run cost one blocking XREAD, not two hundred. A viewer first catches up
from its own position with XRANGE, then takes the shared feed's events, skipping what it already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis

from app.events import Event, decode_entry, stream_key

QUEUE_LIMIT = 5000  # a viewer this far behind is dropped; its browser reconnects and catches up
IDLE_CLOSE_S = 30.0


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class RunFeed:
    """Reads one run's stream and hands every new event to each subscribed viewer's queue."""

    def __init__(self, client: aioredis.Redis, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.viewers: set[asyncio.Queue[Event | None]] = set()
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
                                queue.put_nowait(None)  # too slow: end its stream
                            else:
                                queue.put_nowait(event)
                loop = asyncio.get_running_loop()
                if self.viewers:
                    idle_since = None
                elif idle_since is None:
                    idle_since = loop.time()
                elif loop.time() - idle_since > IDLE_CLOSE_S:
                    return
        except (redis.RedisError, OSError):
            for queue in list(self.viewers):
                queue.put_nowait(None)  # Redis went away: viewers reconnect and catch up
            self.viewers.clear()


class LiveHub:
    """The feeds of one event loop, over one Redis connection pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        # No read timeout: the feed's XREAD blocks for seconds on purpose (redis-py 8 defaults to 5 s).
        self.client = aioredis.Redis.from_url(url, socket_timeout=None)
        self.feeds: dict[str, RunFeed] = {}

    async def follow(self, run_id: str, after: str, *, finished: bool) -> AsyncIterator[Event | None]:
        """The run's events after `after`: first those already in the stream, then new ones as they come.
        None is a heartbeat (nothing new for a while). A finished run's stream ends after its backlog."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        feed = self.feeds.setdefault(run_id, RunFeed(self.client, run_id))
        if not finished:
            feed.viewers.add(queue)  # before catching up: nothing published from now on can be missed
            await feed.start()
        try:
            sent = after or "0-0"
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
                    item: Event | None = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    yield None
                    continue
                if item is None:
                    return
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
