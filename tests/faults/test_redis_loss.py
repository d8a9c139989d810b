"""redis-server stopped and restarted mid-run: training goes on, no metric point is lost, a browser-like SSE
client that reconnects with Last-Event-ID gets the events again, and the Celery worker reconnects by itself."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import wait_for
from tests.faults.conftest import FaultStack
from tests.sse import Event, open_stream

pytestmark = pytest.mark.slow


class ReconnectingSSE(threading.Thread):
    """Follows a run's events as a browser does: when the stream ends or fails, reconnect with Last-Event-ID."""

    def __init__(self, url: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.run_id = url, run_id
        self.events: list[Event] = []
        self.connections = 0
        self.resumed_with: list[str] = []  # the Last-Event-ID of each reconnect that got events
        self.errors: list[str] = []  # why a stream ended early, as its `error` event said
        self.stop = threading.Event()

    def run(self) -> None:
        last_id = ""
        while not self.stop.is_set():
            received = 0
            try:
                with (
                    httpx.Client(base_url=self.url, timeout=httpx.Timeout(5, read=30)) as client,
                    open_stream(client, f"/api/v1/runs/{self.run_id}/events", last_event_id=last_id) as events,
                ):
                    self.connections += 1
                    for event in events:
                        if event.name == "error":  # no id of its own: the browser keeps the last one
                            self.errors.append(event.data["message"])
                            continue
                        self.events.append(event)
                        if received == 0 and last_id:
                            self.resumed_with.append(last_id)
                        received += 1
                        last_id = event.id
                        if event.name == "done":
                            return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)  # the browser waits `retry:` (2 s); quicker here


def test_training_survives_a_redis_restart_and_live_events_come_back(fault_stack: FaultStack) -> None:
    stack = fault_stack
    stack.start_all()
    client = stack.client()
    run_id = stack.submit(name="through a redis restart", max_steps=80, save_steps=10)
    viewer = ReconnectingSSE(stack.url, run_id)
    viewer.start()

    wait_for(lambda: stack.logged_step(run_id) >= 10, 90, "step 10")
    stack.stop_redis()
    stopped_at = stack.logged_step(run_id)
    # Training goes on without Redis: the database takes the metric points, the lease is in the database too.
    wait_for(lambda: stack.logged_step(run_id) >= stopped_at + 10, 60, "10 steps without Redis")
    assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "running"
    stack.start_redis()  # same port, same append-only file: the queue and the streams are back

    final = stack.wait_status(run_id, ("succeeded", "failed"), 120)
    assert final.status == "succeeded", f"{final.error}\n{stack.worker_logs()}"
    assert stack.train_steps(run_id) == list(range(1, 81))
    viewer.join(timeout=60)
    assert not viewer.is_alive(), "the SSE client never got the done event"

    # The viewer lost its stream with Redis and got it back by reconnecting with the last id it had.
    assert viewer.connections >= 2 and viewer.resumed_with
    assert viewer.errors and all("Redis" in message for message in viewer.errors), viewer.errors
    ids = [event_id for event_id, _, _ in viewer.events]
    assert ids == sorted(set(ids), key=lambda i: tuple(map(int, i.split("-"))))  # in order, nothing twice
    # The events of the steps trained while Redis was down waited in the worker and went out afterwards.
    metric_steps = [data["step"] for _, name, data in viewer.events if name == "metric" and data["kind"] == "train"]
    assert metric_steps == list(range(1, 81))
    assert viewer.events[-1][1:] == ("done", {"status": "succeeded"})

    # The Celery worker reconnected to the broker on its own: it takes the next run.
    second = stack.submit(name="after the restart", max_steps=3, save_steps=10)
    assert stack.wait_status(second, ("succeeded", "failed"), 90).status == "succeeded"
    print(f"Redis stopped at step {stopped_at}; {viewer.connections} SSE connections")
