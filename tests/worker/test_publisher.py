"""A run's live events through a connection that loses replies: the events reach the stream once each.

A real Redis sits behind a TCP proxy that can close the connection right after Redis answered one request,
as when Redis stops or the network cuts between the append and its reply. The publisher then sends the
event again: it must not be appended twice, which a viewer would see as a step drawn twice.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from app import events
from app.contracts.events import LiveEvent, MetricEvent, StatusEvent
from app.events import Sender, publish, senders_key, stream_key
from worker.runtime.publisher import EventPublisher


class ReplyCutter:
    """A TCP proxy to Redis; the reply to the next request that holds `cut_when` is dropped and the client's
    connection closed (Redis has carried the request out)."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_when: bytes | None = None
        self.cuts = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ)
        selector.register(server, selectors.EVENT_READ)
        cut_next_reply = False
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.fileobj is client:
                        with self._lock:
                            if self.cut_when is not None and self.cut_when in data:
                                self.cut_when, cut_next_reply = None, True
                        server.sendall(data)
                    elif cut_next_reply:
                        with self._lock:
                            self.cuts += 1
                        return  # Redis answered; the client never hears it
                    else:
                        client.sendall(data)
        finally:
            selector.close()
            client.close()
            server.close()


def _train_steps(client: redis.Redis, run_id: str) -> list[int]:
    entries = client.xrange(stream_key(run_id))
    return [json.loads(fields[b"data"])["step"] for _, fields in entries if fields[b"event"] == b"metric"]


def test_a_metric_whose_reply_was_lost_is_in_the_stream_once(redis_url: str) -> None:
    cutter = ReplyCutter(redis_url)
    cutter.cut_when = b'"step":3,'
    publisher = EventPublisher(cutter.url, "lost-reply", maxlen=1000)
    try:
        for step in range(1, 7):
            publisher.publish(MetricEvent(step=step, kind="train", time=float(step), loss=1.0))
    finally:
        publisher.close()
        cutter.close()
    assert cutter.cuts == 1, "the proxy never lost the reply to step 3's append"
    client = redis.Redis.from_url(redis_url)
    assert _train_steps(client, "lost-reply") == [1, 2, 3, 4, 5, 6]


def test_one_event_sent_twice_by_its_sender_is_appended_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    sender, other = Sender(), Sender()
    first = publish(client, "twice", StatusEvent(status="running"), maxlen=100, once=(sender, 1))
    again = publish(client, "twice", StatusEvent(status="running"), maxlen=100, once=(sender, 1))
    # Another sender's first event is its own, and the first sender's next one goes on after it.
    theirs = publish(client, "twice", StatusEvent(status="running"), maxlen=100, once=(other, 1))
    second = publish(client, "twice", StatusEvent(status="failed"), maxlen=100, once=(sender, 2))
    assert first is not None and again is None and theirs is not None and second is not None
    assert [entry_id.decode() for entry_id, _ in client.xrange(stream_key("twice"))] == [first, theirs, second]
    assert client.hlen(senders_key("twice")) == 2


def test_closing_with_redis_unreachable_gives_up_after_its_wait_and_counts_what_it_dropped() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    publisher = EventPublisher(f"redis://127.0.0.1:{port}", "no-redis", maxlen=100)  # nothing listens there
    for step in range(1, 4):
        publisher.publish(MetricEvent(step=step, kind="train", time=float(step), loss=1.0))
    publisher.close(wait_s=1.5)
    assert publisher.dropped == 3  # counted as the sender gives up


def test_with_a_linger_the_events_of_a_moment_go_together_in_one_round_trip(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends: list[list[int]] = []
    real = events.publish_many

    def counted(client: redis.Redis, run_id: str, numbered: list[tuple[int, LiveEvent]], **kwargs: Any) -> int:
        sends.append([number for number, _ in numbered])
        return real(client, run_id, numbered, **kwargs)

    monkeypatch.setattr(events, "publish_many", counted)
    publisher = EventPublisher(redis_url, "lingers", maxlen=1000, linger_s=1.0)
    try:
        publisher.publish(StatusEvent(status="running"))  # after a quiet spell: sent at once
        deadline = time.monotonic() + 5
        while not sends:
            assert time.monotonic() < deadline, "the first event was not sent at once"
            time.sleep(0.01)
        for step in range(1, 11):
            publisher.publish(MetricEvent(step=step, kind="train", time=float(step), loss=1.0))
        time.sleep(0.2)
        assert sends == [[1]]  # the next ones wait for the rest of the second
        deadline = time.monotonic() + 5
        while len(sends) < 2:
            assert time.monotonic() < deadline, "the lingering events were never sent"
            time.sleep(0.01)
    finally:
        publisher.close()
    assert sends == [[1], list(range(2, 12))]
    assert _train_steps(redis.Redis.from_url(redis_url), "lingers") == list(range(1, 11))
