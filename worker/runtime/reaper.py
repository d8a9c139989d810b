"""Finds runs whose worker was lost and hands them to a live one.

Every worker runs a reaper in a background thread (started from `worker_ready`). A run is lost when its
lease (`heartbeat_at`, renewed by the training worker every few seconds) has not changed for
LORADECK_LEASE_TIMEOUT_S, as timed by the reaper's own clock: machines whose clocks disagree still agree
on that. The reaper then moves the run to `interrupted` (attempts + 1), says why on the run's stream and
enqueues it again; a live worker claims it and resumes from the newest complete checkpoint. A run that
lost MAX_ATTEMPTS workers is failed instead: something in it keeps killing its worker.

Each move is a conditional UPDATE on the heartbeat the reaper saw (`runs.update_run_if`), so any number
of reapers may watch the same runs: one acts, the others change nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select, update

from app import events, runs
from app.config import get_settings
from app.contracts.events import ArtifactEvent, DoneEvent, LiveEvent, StatusEvent
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactStatus, Run, RunStatus, utcnow
from app.queue import enqueue_train
from app.rundir import RunDir
from app.workers import list_workers
from worker.runtime.lease import HANDED_BACK, reap_every
from worker.runtime.scheduling import runnable

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# An interrupted run nobody claimed for this many leases is enqueued again (its message may have been lost
# with Redis, or the reaper died between its UPDATE and the enqueue). Rare on purpose: extra messages for
# a run that waits behind a long one only cost a refused claim each, but they pile up.
REQUEUE_AFTER_LEASES = 10


class Reaper:
    """One pass with `reap()`; `start()` runs passes in a daemon thread until `stop()`."""

    def __init__(
        self,
        *,
        lease_timeout_s: float | None = None,
        enqueue: Callable[[str], None] = enqueue_train,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = get_settings()
        self.lease_timeout_s = lease_timeout_s or settings.lease_timeout_s
        self.enqueue, self.clock = enqueue, clock
        self.redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        # run id -> (the heartbeat last seen, when this reaper first saw that value)
        self.seen: dict[str, tuple[datetime | None, float]] = {}
        self.unsent: set[str] = set()  # runs interrupted here whose enqueue failed: retried every pass
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loradeck-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        # A first pass at once: a worker restarted after a crash starts timing its predecessor's lease now.
        every = reap_every(self.lease_timeout_s)
        while True:
            try:
                self.reap()
            except Exception:  # the database or Redis is away: the next pass tries again
                log.exception("reaper pass failed")
            if self._stopped.wait(every):
                return

    def reap(self) -> list[tuple[str, RunStatus]]:
        """Move the runs whose lease expired; returns (run id, new status) for each move made here."""
        now = self.clock()
        with get_sessionmaker()() as session:
            watched = runs.leases(session=session, statuses=[RunStatus.running, RunStatus.interrupted])
        seen: dict[str, tuple[datetime | None, float]] = {}
        expired: list[tuple[str, datetime | None]] = []
        for run_id, status, heartbeat, cancel in watched:
            before = self.seen.get(run_id)
            since = before[1] if before is not None and before[0] == heartbeat else now
            seen[run_id] = (heartbeat, since)
            if now - since >= self._timeout(status, cancel):
                expired.append((run_id, heartbeat))
        self.seen = seen
        moved = [move for run_id, heartbeat in expired if (move := self._expire(run_id, heartbeat))]
        self._end_orphaned_artifacts()
        for run_id in list(self.unsent):
            self._send(run_id)
        return moved + [(run_id, RunStatus.failed) for run_id in self._end_unrunnable()]

    def _end_unrunnable(self) -> list[str]:
        """Queued runs that can no longer start (their dataset or base model was deleted, or lies outside the
        roots now) fail at once with the reason, instead of waiting, maybe for days, behind other runs."""
        with get_sessionmaker()() as session:
            specs = [(run.id, run.spec) for run in runs.list_runs(session=session, status=RunStatus.queued, limit=1000)]
        return [run_id for run_id, spec in specs if not runnable(run_id, spec)]

    def _end_orphaned_artifacts(self) -> None:
        """A merge or an export whose worker went away (its heartbeat is gone, or it started again since) would
        stay `running` for ever, and block asking for it again: fail it, saying so."""
        with get_sessionmaker()() as session:
            running = [
                (artifact.id, artifact.run_id, artifact.kind, dict(artifact.details or {}))
                for artifact in session.scalars(select(Artifact).where(Artifact.status == ArtifactStatus.running))
            ]
        if not running:
            return
        alive = {(record.name, record.started) for record in list_workers(self.redis)}
        for artifact_id, run_id, kind, details in running:
            holder = details.get("made_by") or {}
            if not holder or (holder.get("worker"), holder.get("started")) in alive:
                continue  # made in-process (no worker to watch), or its worker lives
            error = f"the worker making it ({holder.get('worker')}) stopped; ask for it again"
            with get_sessionmaker()() as session:
                ended = session.execute(
                    update(Artifact)
                    .where(Artifact.id == artifact_id, Artifact.status == ArtifactStatus.running)
                    .values(status=ArtifactStatus.failed, error=error)
                )
                session.commit()
            if ended.rowcount:  # type: ignore[attr-defined]
                log.warning("%s artifact %s of run %s: %s", kind, artifact_id, run_id, error)
                self._publish(run_id, ArtifactEvent(id=artifact_id, kind=kind, status="failed", error=error))

    def _timeout(self, status: str, cancel: bool) -> float:
        if status == RunStatus.running:
            return self.lease_timeout_s
        # An interrupted run has no worker: one cancelled meanwhile ends now; the others wait for their message.
        return 0.0 if cancel else REQUEUE_AFTER_LEASES * self.lease_timeout_s

    def _expire(self, run_id: str, heartbeat: datetime | None) -> tuple[str, RunStatus] | None:
        with get_sessionmaker()() as session:
            run = session.get(Run, run_id)
            if run is None or run.heartbeat_at != heartbeat:
                return None
            status = RunStatus(run.status)
            step = RunDir.of(run_id).resume_step()
            new, values = _decide(run, step)
            if new is None or not runs.update_run_if(
                session=session, run_id=run_id, status=status, heartbeat_at=heartbeat, values=values
            ):
                return None
        self.seen.pop(run_id, None)
        if new == RunStatus.interrupted and status == RunStatus.interrupted:
            log.info("run %s is still interrupted, unclaimed; enqueued again", run_id)
        else:
            log.warning("run %s: %s", run_id, values.get("error") or new.value)
            self._publish(run_id, StatusEvent(status=new.value, error=values.get("error")))
        if new == RunStatus.interrupted:
            self._send(run_id)
        else:
            self._publish(run_id, DoneEvent(status=new.value))
        return run_id, new

    def _send(self, run_id: str) -> None:
        try:
            self.enqueue(run_id)
        except Exception as exc:  # Redis is down: the run stays interrupted and is sent on a later pass
            log.warning("run %s not enqueued yet (%s); retrying", run_id, exc)
            self.unsent.add(run_id)
        else:
            self.unsent.discard(run_id)

    def _publish(self, run_id: str, event: LiveEvent) -> None:
        try:
            events.publish(self.redis, run_id, event, maxlen=get_settings().stream_maxlen)
        except redis.RedisError as exc:  # the database has the new status; only the live feed misses it
            log.warning("run %s: %s event not published: %s", run_id, event.type, exc)


def _decide(run: Run, step: int) -> tuple[RunStatus | None, dict[str, Any]]:
    """What becomes of a run whose lease expired: the new status and the values to write (None: leave it)."""
    ended = {"finished_at": utcnow()}
    if run.cancel_requested:  # cancelled while its worker was away: nobody is left to stop it at a step
        return RunStatus.cancelled, {"status": RunStatus.cancelled, "error": None, **ended}
    if run.status == RunStatus.interrupted:
        # Unclaimed for REQUEUE_AFTER_LEASES leases: enqueued again if a reaper interrupted it or its worker
        # handed it back; one stopped with Ctrl-C in the CLI waits for `loradeck train --resume`.
        return (RunStatus.interrupted, {}) if run.attempts or run.error == HANDED_BACK else (None, {})
    if run.attempts + 1 >= MAX_ATTEMPTS:
        error = (
            f"the worker running it was lost {run.attempts + 1} times (the last at step {step} or later), so it "
            "is not resumed again: something in the run may be killing its worker (out of host memory: "
            "lower per_device_train_batch_size or max_seq_length); see the worker's log"
        )
        return RunStatus.failed, {"status": RunStatus.failed, "attempts": Run.attempts + 1, "error": error, **ended}
    where = f"step {step}" if step else "the start (no checkpoint yet)"
    error = f"the worker running it was lost; resuming from {where}"
    return RunStatus.interrupted, {"status": RunStatus.interrupted, "attempts": Run.attempts + 1, "error": error}
