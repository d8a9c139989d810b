"""A run's control channel (worker.runtime.nudges) against a real Redis: a nudge from the web's side
(app.events.nudge) wakes the waiting control thread at once; without Redis the thread falls back to reading the
flags each beat, and listens again once Redis is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from app.config import get_settings
from app.events import nudge
from app.processes import free_port, start_redis
from worker.runtime import nudges as nudges_module
from worker.runtime.nudges import Nudges


def test_a_nudge_wakes_the_waiting_thread_and_closing_wakes_it_too(loradeck_env: dict[str, str]) -> None:
    closed = threading.Event()
    channel = Nudges("run-a", closed)
    try:
        assert channel.listening
        assert not channel.wait(0.1)  # nothing said
        threading.Timer(0.3, nudge, args=(loradeck_env["REDIS_URL"], "run-a")).start()
        started = time.monotonic()
        assert channel.wait(10)
        assert time.monotonic() - started < 5  # woken by the nudge, not by the end of the wait
        assert not channel.wait(0.1)
        nudge(loradeck_env["REDIS_URL"], "run-b")  # another run's channel
        assert not channel.wait(0.3)
        waited: list[float] = []

        def wait_long() -> None:
            started = time.monotonic()
            channel.wait(30)
            waited.append(time.monotonic() - started)

        waiting = threading.Thread(target=wait_long)
        waiting.start()
        time.sleep(0.3)
        closed.set()  # the end of training: the callback's close() sets its event, then wakes the thread
        channel.wake()
        waiting.join(timeout=10)
        assert waited and waited[0] < 5
    finally:
        channel.close()
    channel.wake()  # after close: nothing to do, no error


def test_without_redis_it_waits_on_the_beat_and_listens_again_when_redis_is_back(
    loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")  # nobody there yet
    get_settings.cache_clear()
    monkeypatch.setattr(nudges_module, "RESUBSCRIBE_EVERY_S", 0.2)
    closed = threading.Event()
    channel = Nudges("run-c", closed)
    server = None
    try:
        assert not channel.listening
        assert nudge(f"redis://127.0.0.1:{port}/0", "run-c") is False  # the web's side knows it failed
        started = time.monotonic()
        assert not channel.wait(0.1)  # a beat's wait, on the closed event
        assert time.monotonic() - started >= 0.09
        server = start_redis(port=port, directory=tmp_path / "redis", persist=False)
        time.sleep(0.2)
        assert channel.wait(0.01)  # subscribed again: read the flags now, a nudge may have been lost meanwhile
        assert channel.listening
        assert nudge(f"redis://127.0.0.1:{port}/0", "run-c") and channel.wait(5)
    finally:
        channel.close()
        get_settings.cache_clear()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
