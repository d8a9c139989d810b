"""What the run page's live stream sends for each event of a run (app.services.run_stream). The browser tests
follow the same stream end to end; these name each rule on its own."""

from __future__ import annotations

from datetime import timedelta

from app.contracts.events import ArtifactEvent, DoneEvent, StatusEvent
from app.events import Event
from app.models import utcnow
from app.services.run_stream import RunStream


def _event(number: int, kind: str, data: dict[str, object]) -> Event:
    return Event(id=f"{number}-0", event=kind, data=data)


def _artifact(number: int, status: str) -> Event:
    return _event(number, ArtifactEvent.type, ArtifactEvent(id="a1", kind="gguf", status=status).data())


def test_a_training_point_carries_the_elapsed_time_and_the_eta() -> None:
    stream = RunStream(run_id="r", status="running", max_steps=100, started_at=utcnow() - timedelta(seconds=100))
    [point], over = stream.shape(_event(1, "metric", {"step": 50, "loss": 1.0}))
    assert not over
    assert point.data["loss"] == 1.0 and point.data["step"] == 50
    assert point.data["elapsed_text"].startswith("1m 4") and point.data["eta_text"].startswith("1m 4")
    # An evaluation point is not a training step: it is sent as it came.
    [evaluation], _ = stream.shape(_event(2, "metric", {"kind": "eval", "step": 50, "eval_loss": 1.2}))
    assert evaluation.data == {"kind": "eval", "step": 50, "eval_loss": 1.2}


def test_a_run_claimed_while_followed_counts_its_time_from_then() -> None:
    stream = RunStream(run_id="r", status="queued", max_steps=10, started_at=None)
    stream.shape(_event(1, StatusEvent.type, StatusEvent(status="running").data()))
    [point], _ = stream.shape(_event(2, "metric", {"step": 1, "loss": 2.0}))
    assert point.data["elapsed_text"] == "0s"


def test_done_ends_the_stream_when_nothing_of_the_run_is_being_made() -> None:
    stream = RunStream(run_id="r", status="running", max_steps=10, started_at=utcnow())
    stream.shape(_event(1, StatusEvent.type, StatusEvent(status="succeeded").data()))
    sent, over = stream.shape(_event(2, DoneEvent.type, DoneEvent(status="succeeded").data()))
    assert over and [event.event for event in sent] == ["done"]


def test_an_export_in_progress_keeps_a_finished_runs_stream_open_until_it_is_made() -> None:
    stream = RunStream(run_id="r", status="succeeded", max_steps=10, started_at=utcnow(), busy={"a1"})
    assert stream.shape(_event(1, DoneEvent.type, DoneEvent(status="succeeded").data())) == ([], False)
    sent, over = stream.shape(_artifact(2, "running"))
    assert not over and [event.event for event in sent] == ["artifact"]
    sent, over = stream.shape(_artifact(3, "ready"))
    assert over and [event.event for event in sent] == ["artifact", "done"]
    assert sent[1].data == {"status": "succeeded"} and sent[1].id == "3-0"


def test_a_finished_runs_stream_replayed_from_before_its_end_goes_on_past_the_adapter_to_done() -> None:
    stream = RunStream(run_id="r", status="succeeded", max_steps=10, started_at=utcnow())
    adapter = ArtifactEvent(id="a0", kind="adapter", status="ready").data()
    sent, over = stream.shape(_event(1, ArtifactEvent.type, adapter))
    assert not over and [event.event for event in sent] == ["artifact"]
    sent, over = stream.shape(_event(2, "evaluation", {"adapter": {}}))
    assert not over and [event.event for event in sent] == ["evaluation"]
    sent, over = stream.shape(_event(3, DoneEvent.type, DoneEvent(status="succeeded").data()))
    assert over and [event.event for event in sent] == ["done"]
