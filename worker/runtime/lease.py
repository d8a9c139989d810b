"""A worker's lease on the run it trains, and the checkpoint a run resumes from.

The worker renews the lease (`runs.heartbeat_at`) from a background thread while it trains. When the
renewals stop (the process was killed, the machine went away), a reaper on any worker notices and hands
the run to a live worker, which resumes it from its newest complete checkpoint (worker/runtime/reaper.py).
If a renewal finds the run taken away (the worker was frozen for longer than the lease), `lost` is set and
training stops at the next step, so the run never trains in two places at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import runs
from app.contracts.events import LogEvent
from app.rundir import RunDir
from worker.runtime.publisher import EventPublisher

log = logging.getLogger(__name__)

# Set when the Celery worker begins a warm shutdown (`loradeck up` stopping, a deploy): the run in progress
# saves a checkpoint at its next step and goes back to the queue. Otherwise the worker would train on until
# the run ends, be killed, and cost the run one of its attempts.
WORKER_STOPPING = threading.Event()
HANDED_BACK = "its worker stopped; the next worker resumes it from its last checkpoint"


def heartbeat_every(lease_timeout_s: float) -> float:
    """Renew about six times per lease: one slow write or a busy moment never lets a live lease expire."""
    return min(5.0, lease_timeout_s / 6)


def reap_every(lease_timeout_s: float) -> float:
    """A lost run is found within the lease plus this; 10 s for the default 30 s lease."""
    return min(10.0, lease_timeout_s / 3)


class Lease:
    """Renews the run's heartbeat every `every_s` seconds from a thread, while used as a context manager."""

    def __init__(self, *, run_id: str, worker: str, sessions: sessionmaker[Session], every_s: float) -> None:
        self.run_id, self.worker, self.sessions, self.every_s = run_id, worker, sessions, every_s
        self.lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"loradeck-lease-{run_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def renew(self) -> None:
        try:
            with self.sessions() as session:
                held = runs.renew_lease(session=session, run_id=self.run_id, worker=self.worker)
        except SQLAlchemyError as exc:  # the database may be back before the lease runs out: keep trying
            log.warning("lease on run %s not renewed: %s", self.run_id, exc)
            return
        if not held and not self._stopped.is_set():
            log.warning("run %s is no longer this worker's (lease expired); training stops", self.run_id)
            self.lost = True
            self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self.every_s):
            self.renew()


def resume_point(run_dir: RunDir, sessions: sessionmaker[Session], publisher: EventPublisher) -> Path | None:
    """The newest complete checkpoint (None: start afresh), with the metric points past it dropped; leftovers
    of a save that was cut off are deleted (only the worker about to resume may do that)."""
    run_dir.remove_partial_checkpoints()
    complete = run_dir.checkpoints(complete_only=True)
    step, checkpoint = (complete[-1].step, complete[-1].path) if complete else (0, None)
    with sessions() as session:
        # The steps past the checkpoint are trained again; their old points would repeat those steps.
        dropped = runs.truncate_metrics(session=session, run_id=run_dir.run_id, after_step=step)
    if checkpoint is not None:
        log.info("resuming from %s (%d later metric points dropped)", checkpoint, dropped)
        publisher.publish(LogEvent(lines=[f"resumed from the checkpoint at step {step}"], step=step))
    return checkpoint
