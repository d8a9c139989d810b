"""A training run's control channel, as its control thread listens to it (worker.engine.callbacks).

The web publishes on the channel right after it sets the run's cancel or stop flag (app.events.nudge); the
thread then reads the flags from the database at once. Waiting for a nudge is a blocking read on a socket: no CPU
between two, where reading the flags every beat cost 0.13% of a CPU run's time. Redis trouble only means the
thread reads the database each beat, as before, until it can subscribe again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis
from redis.client import PubSub

from app.config import get_settings
from app.events import control_channel

log = logging.getLogger(__name__)

RESUBSCRIBE_EVERY_S = 5.0


class Nudges:
    """The subscription; `listening` says whether nudges can arrive now."""

    def __init__(self, run_id: str, closed: threading.Event) -> None:
        self.channel = control_channel(run_id)
        self.closed = closed
        self._client: redis.Redis | None = None
        try:
            self._client = redis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=2, socket_timeout=5)
        except ValueError as exc:  # a REDIS_URL it cannot read: never listening, the flags read each beat
            log.warning("control channel %s: no Redis client (%s); reading the flags each beat", self.channel, exc)
        self._pubsub: PubSub | None = None
        self._retry_at = 0.0
        # `wake` runs on the thread that ends training, `close` on the control thread: one at a time, so the
        # client is never closed under a publish.
        self._client_lock = threading.Lock()
        self._client_closed = False
        self._subscribe()

    @property
    def listening(self) -> bool:
        return self._pubsub is not None

    def _subscribe(self) -> None:
        self._retry_at = time.monotonic() + RESUBSCRIBE_EVERY_S
        if self._client is None:
            return
        try:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
        except redis.RedisError as exc:
            log.info("control channel %s: not listening (%s); reading the flags each beat", self.channel, exc)
            return
        self._pubsub = pubsub

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds (less once the callback is closed and `wake` was called); True when the flags
        should be read now: a nudge came, or the subscription is back after a gap in which one may have been lost."""
        if self._pubsub is None:
            self.closed.wait(timeout)
            if time.monotonic() < self._retry_at or self.closed.is_set():
                return False
            self._subscribe()
            return self._pubsub is not None
        deadline = time.monotonic() + timeout
        # get_message also returns None for the subscription's own confirmation, which it reads and drops: wait on.
        while (left := deadline - time.monotonic()) > 0 and not self.closed.is_set():
            try:
                message = self._pubsub.get_message(timeout=left)
            except (redis.RedisError, OSError) as exc:
                log.info("control channel %s: lost (%s); reading the flags each beat", self.channel, exc)
                self._drop()
                return False
            if message is not None and message.get("type") == "message":
                return True
        return False

    def wake(self) -> None:
        """Let a thread waiting in `wait` see that it is closed now, rather than at the end of its wait."""
        with self._client_lock:
            if self._pubsub is None or self._client is None or self._client_closed:
                return
            with contextlib.suppress(redis.RedisError):  # else it sees the closed event at the end of its wait
                self._client.publish(self.channel, "closed")

    def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def close(self) -> None:
        with self._client_lock:
            self._client_closed = True
            self._drop()
            if self._client is not None:
                self._client.close()
