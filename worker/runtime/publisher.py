"""A run's live events, sent to its Redis Stream from a background thread.

Training never waits on Redis: `publish` queues the event and returns. While Redis is unreachable (stopped,
restarting, a network blip) the events wait in a bounded buffer and go out in order once it answers again,
so a viewer that reconnects with Last-Event-ID sees them too. The database keeps every metric regardless.
Each event is numbered when it is queued and keeps its number through every retry, so one whose reply was
lost (Redis stopped after appending it) is not appended a second time (`app.events.publish`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from app import events
from app.contracts.events import RUN_EVENTS, LiveEvent

log = logging.getLogger(__name__)

RETRY_EVERY_S = 1.0
BUFFER_EVENTS = 10_000  # past this many waiting events the oldest go (a metric point is 200 bytes or so)
CLOSE_WAIT_S = 10.0  # at the end of a run, how long the last events may take to go out

EventSink = Callable[[str, dict[str, Any]], None]


class EventPublisher:
    """Publishes a run's events without blocking; while Redis is unreachable it holds them and retries.

    `echo`, when given, also receives every event at once, Redis or not: the CLI prints them from there.
    """

    def __init__(self, redis_url: str, run_id: str, *, maxlen: int, echo: EventSink | None = None) -> None:
        # Short timeouts: a dead host must not hold the sender for long (the training loop never waits on it).
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.run_id = run_id
        self.maxlen = maxlen
        self.echo = echo
        self.dropped = 0
        self.sender = events.Sender()
        self._waiting: collections.deque[tuple[int, LiveEvent]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._give_up_at = float("inf")
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._send_loop, name=f"loradeck-events-{run_id}", daemon=True)
        self._thread.start()

    def publish(self, event: LiveEvent) -> None:
        if RUN_EVENTS.get(event.type) is not type(event):  # a programming error: raise it here, not in the sender
            raise ValueError(f"{type(event).__name__} is not a run event; run events are {', '.join(RUN_EVENTS)}")
        if self.echo is not None:
            self.echo(event.type, event.data())
        with self._cond:
            if len(self._waiting) >= BUFFER_EVENTS:
                self._waiting.popleft()
                self.dropped += 1
            self._waiting.append((self.sender.next_number(), event))
            self._cond.notify()

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Send what is still waiting, retrying for up to `wait_s` (then what Redis did not take is dropped),
        then stop the sender."""
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + wait_s
            self._cond.notify()
        self._thread.join(timeout=wait_s + RETRY_EVERY_S)
        if self._thread.is_alive():
            log.warning("live events: %d not sent before the end of the run", len(self._waiting))
        self.client.close()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return
                numbered = self._waiting.popleft()
            number, event = numbered
            try:
                events.publish(self.client, self.run_id, event, maxlen=self.maxlen, once=(self.sender, number))
            except redis.RedisError as exc:
                if not self._went_down(exc, numbered):
                    return
                continue
            if self._down_since is not None:
                log.info("Redis is back after %.0f s; live events resume", time.monotonic() - self._down_since)
                self._down_since = None

    def _went_down(self, exc: redis.RedisError, numbered: tuple[int, LiveEvent]) -> bool:
        """Put the event back and wait before retrying; False when closing has waited long enough (drop what
        is left)."""
        with self._cond:
            if self._closing and time.monotonic() >= self._give_up_at:
                self.dropped += len(self._waiting) + 1
                log.warning("Redis is unreachable (%s): the run's last %d live events are dropped", exc, self.dropped)
                self._waiting.clear()
                return False
            self._waiting.appendleft(numbered)
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("live events wait: Redis is unreachable (%s); the database keeps the metrics", exc)
            self._cond.wait(min(RETRY_EVERY_S, max(self._give_up_at - time.monotonic(), 0.0)))  # close() wakes it
        return True
