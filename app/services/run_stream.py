"""What a run's live stream says: every event of the run, metric points with the figures the page shows
beside them (the time since the start, the ETA), and, while a merge or an export of the run is being made,
its progress past the run's end; `done` once the run is over and nothing of it is being made.

The HTTP layer follows the run's Redis Stream and writes what `RunStream.shape` gives it as server-sent events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from app.contracts.events import ArtifactEvent, DoneEvent, EvaluatingEvent, StatusEvent
from app.events import Event
from app.formatting import live_progress
from app.models import ArtifactStatus, RunStatus, utcnow
from app.services.runs import artifacts_in_progress, get_run

MADE = (ArtifactStatus.ready.value, ArtifactStatus.failed.value)


@dataclass
class RunStream:
    run_id: str
    status: str
    max_steps: int | None
    started_at: datetime | None
    busy: set[str] = field(default_factory=set)  # artifacts being made (merges, exports)
    last_id: str = "0-0"

    @property
    def over(self) -> bool:
        """Nothing more will come: the run has ended and nothing of it is being made."""
        return RunStatus(self.status).finished and not self.busy

    def shape(self, event: Event) -> tuple[list[Event], bool]:
        """The events to send for one event of the stream, and whether the stream ends after them."""
        self.last_id = event.id
        if event.event == StatusEvent.type:
            self.status = StatusEvent.model_validate(event.data).status
            if self.started_at is None and self.status == RunStatus.running:
                self.started_at = utcnow()  # claimed just now
        elif event.event == "metric" and event.data.get("kind", "train") == "train":
            figures = live_progress(self.started_at, utcnow(), int(event.data["step"]), self.max_steps, self.status)
            event = Event(id=event.id, event=event.event, data=event.data | figures)
        elif event.event == EvaluatingEvent.type:
            # No metric points come while base and adapter answer: the elapsed time moves on with these.
            figures = live_progress(self.started_at, utcnow(), 0, None, self.status)
            event = Event(id=event.id, event=event.event, data=event.data | figures)
        made_now = False
        if event.event == ArtifactEvent.type:
            artifact = ArtifactEvent.model_validate(event.data)
            made_now = artifact.status in MADE and artifact.id in self.busy
            (self.busy.discard if artifact.status in MADE else self.busy.add)(artifact.id)
        if event.event == DoneEvent.type:
            # The run has ended; what is being made of it (a merge, an export) reports on before `done`.
            return ([], False) if self.busy else ([event], True)
        if made_now and self.over:
            # The last thing being made of an ended run is made. Only that: a finished run's stream replayed
            # from before its end holds the adapter's artifact before its evaluation and its own `done`.
            return [event, self.done()], True
        return [event], False

    def done(self) -> Event:
        return Event(id=self.last_id, event=DoneEvent.type, data=DoneEvent(status=self.status).data())


def run_stream(*, session: Session, run_id: str) -> RunStream:
    """The stream's state as the run stands now (NotFound for an unknown run)."""
    run = get_run(session=session, run_id=run_id)
    return RunStream(
        run_id=run.id,
        status=run.status,
        max_steps=run.max_steps,
        started_at=run.started_at,
        busy=artifacts_in_progress(session=session, run_id=run_id),
    )
