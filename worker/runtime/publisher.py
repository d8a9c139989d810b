"""A run's live events, sent to its Redis Stream from a background thread.

Training never waits on Redis: `publish` queues the event and returns. While Redis is unreachable (stopped,
restarting, a network blip) the events wait in a bounded buffer and go out in order once it answers again,
so a viewer that reconnects with Last-Event-ID sees them too. The database keeps every metric regardless.
Each event is numbered when it is queued and keeps its number through every retry, so one whose reply was
lost (Redis stopped after appending it) is not appended a second time (`app.events.publish_many`).

With `linger_s`, the sender sends at most once per `linger_s`: the events queued meanwhile go together, in one
round trip. A training run uses it (LIVE_LINGER_S): a step's metric point reaches the live chart up to that much
later, and the sender costs one wake-up and one Redis call per interval instead of one per event. An event
after a quiet spell still goes at once.
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
LIVE_LINGER_S = 1.0  # a training run's live events: sent together at most every this many seconds
BATCH_EVENTS = 500  # the most events in one send
BUFFER_EVENTS = 10_000  # past this many waiting events the oldest go (a metric point is 200 bytes or so)
CLOSE_WAIT_S = 10.0  # at the end of a run, how long the last events may take to go out

EventSink = Callable[[str, dict[str, Any]], None]


class EventPublisher:
    """Publishes a run's events without blocking; while Redis is unreachable it holds them and retries.

    `echo`, when given, also receives every event at once, Redis or not: the CLI prints them from there.
    """

    def __init__(
        self, redis_url: str, run_id: str, *, maxlen: int, echo: EventSink | None = None, linger_s: float = 0.0
    ) -> None:
        # Short timeouts: a dead host must not hold the sender for long (the training loop never waits on it).
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.run_id = run_id
        self.maxlen = maxlen
        self.echo = echo
        self.linger_s = linger_s
        self.dropped = 0
        self.sender = events.Sender()
        self._waiting: collections.deque[tuple[int, LiveEvent]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._idle = False  # the sender waits for an event (a publish wakes it; while it lingers, none does)
        self._last_send = float("-inf")
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
            if self._idle:
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
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                # The events of the next moment go with this one: one send per linger_s at most (close() wakes it).
                while not self._closing and (wait := self._last_send + self.linger_s - time.monotonic()) > 0:
                    self._cond.wait(wait)
                if not self._waiting:
                    return
                batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), BATCH_EVENTS))]
            self._last_send = time.monotonic()
            try:
                events.publish_many(self.client, self.run_id, batch, maxlen=self.maxlen, sender=self.sender)
            except redis.RedisError as exc:
                if not self._went_down(exc, batch):
                    return
                continue
            if self._down_since is not None:
                log.info("Redis is back after %.0f s; live events resume", time.monotonic() - self._down_since)
                self._down_since = None

    def _went_down(self, exc: redis.RedisError, batch: list[tuple[int, LiveEvent]]) -> bool:
        """Put the events back and wait before retrying; False when closing has waited long enough (drop what
        is left)."""
        with self._cond:
            if self._closing and time.monotonic() >= self._give_up_at:
                self.dropped += len(self._waiting) + len(batch)
                log.warning("Redis is unreachable (%s): the run's last %d live events are dropped", exc, self.dropped)
                self._waiting.clear()
                return False
            self._waiting.extendleft(reversed(batch))
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("live events wait: Redis is unreachable (%s); the database keeps the metrics", exc)
            self._cond.wait(min(RETRY_EVERY_S, max(self._give_up_at - time.monotonic(), 0.0)))  # close() wakes it
        return True
