"""One PEFT run, start to finish: claim, load, adapt, train (or resume), save, report.

`run_training(run_id)` is the whole story; the steps it takes live in `worker.engine.steps` (shared with
every rank of a multi-GPU run, worker.engine.distributed), the spec -> config mapping in
`worker.engine.configs`. Whatever happens, the run leaves `running`: a finished run is succeeded, failed (with
an error a user can act on, worker.engine.failures) or cancelled; a run whose worker stops is interrupted and
goes back to the queue, and one whose worker is lost is interrupted by a reaper when its lease expires
(worker.runtime.lease, worker.runtime.reaper). Either way it resumes from its last checkpoint when claimed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import runs
from app.config import get_settings
from app.contracts.events import DoneEvent, LogEvent, StatusEvent
from app.db import get_sessionmaker
from app.models import RunStatus
from app.queue import enqueue_train
from app.rundir import RunDir
from worker.engine import fastpaths
from worker.engine.callbacks import MetricsCallback, run_log, tail_lines
from worker.engine.configs import claimed_spec
from worker.engine.distributed import train_distributed
from worker.engine.failures import check_base_model, explain, explained
from worker.engine.objectives import named_values
from worker.engine.steps import (
    build_trainer,
    final_evaluation,
    fit,
    free_memory,
    prepare_training,
    report_params,
    save_results,
)
from worker.runtime.lease import HANDED_BACK, Lease, heartbeat_every, resume_point
from worker.runtime.publisher import LIVE_LINGER_S, EventPublisher, EventSink

log = logging.getLogger(__name__)


def run_training(run_id: str, *, on_event: EventSink | None = None, enforce_roots: bool = True) -> None:
    """Train the run to its end; `on_event` also receives each event published (the CLI prints them).
    `enforce_roots`: its files only under the allowed roots (a worker's task; not `loradeck train`)."""
    settings = get_settings()
    sessions = get_sessionmaker()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with sessions() as session:
        # The claim decides: a duplicated message, or a second worker racing for the run, ends here.
        if not runs.claim_run(session=session, run_id=run_id, worker=worker):
            log.info("run %s was not claimed (not queued, cancelled, or another worker owns it)", run_id)
            return
        raw_spec = runs.get_run(session=session, run_id=run_id).spec

    run_dir = RunDir.of(run_id, settings)
    run_dir.create()
    publisher = EventPublisher(
        settings.redis_url, run_id, maxlen=settings.stream_maxlen, echo=on_event, linger_s=LIVE_LINGER_S
    )
    lease = Lease(run_id=run_id, worker=worker, sessions=sessions, every_s=heartbeat_every(settings.lease_timeout_s))
    status, error = RunStatus.failed, "the run stopped without a result"
    with lease, run_log(run_dir.log_file):
        try:
            log.info("run %s starts on %s", run_id, worker)
            publisher.publish(StatusEvent(status=RunStatus.running.value))
            run_dir.spec_file.write_text(json.dumps(raw_spec, indent=2, ensure_ascii=False), encoding="utf-8")
            status = _train(raw_spec, run_dir, sessions, publisher, lease, enforce_roots=enforce_roots)
            error = HANDED_BACK if status == RunStatus.interrupted else ""
        except Exception as exc:
            error = explain(exc, raw_spec, run_dir.root)
            log.error("run %s failed: %s", run_id, error, exc_info=not explained(exc, run_dir.root))  # bugs: traceback
            publisher.publish(LogEvent(lines=tail_lines(run_dir.log_file)))
        except BaseException:
            # The process itself is going away (shutdown, Ctrl-C): the run resumes from its last checkpoint.
            status, error = RunStatus.interrupted, "the worker stopped before the run finished"
            raise
        finally:
            lease.stop()
            _finish(run_id, worker, status, error, publisher, lease.lost)


def _finish(run_id: str, worker: str, status: RunStatus, error: str, publisher: EventPublisher, lost: bool) -> None:
    """Record the end, unless the run was taken away from this worker: then its new owner reports it."""
    with get_sessionmaker()() as session:
        recorded = not lost and runs.finish_run(
            session=session, run_id=run_id, status=status, error=error or None, worker=worker
        )
    if recorded and error == HANDED_BACK:
        log.info("run %s: %s", run_id, error)
        publisher.publish(StatusEvent(status=status.value, error=error))
        with contextlib.suppress(Exception):  # Redis down: a reaper enqueues it later (worker/runtime/reaper.py)
            enqueue_train(run_id)
    elif recorded:
        log.info("run %s %s", run_id, status.value)
        publisher.publish(StatusEvent(status=status.value, error=error or None))
        publisher.publish(DoneEvent(status=status.value))
    else:
        log.warning("run %s: stopped here; another worker took it over after this one's lease expired", run_id)
    publisher.close()
    free_memory()


def _train(
    raw_spec: dict[str, Any],
    run_dir: RunDir,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    lease: Lease,
    *,
    enforce_roots: bool,
) -> RunStatus:
    run_id = run_dir.run_id
    check_base_model(raw_spec)  # a deleted model directory says so, before the pre-flight calls it "no hub id"
    spec = claimed_spec(raw_spec, enforce_roots=enforce_roots)
    spec = fastpaths.choose(spec, run_id, sessions, publisher)  # auto -> on/off, recorded before training starts
    if spec.gpus > 1:
        return train_distributed(spec, run_dir=run_dir, sessions=sessions, publisher=publisher, lease=lease)
    setup = prepare_training(spec, run_dir)
    report_params(setup.model, run_id, sessions, publisher)
    checkpoint = resume_point(run_dir, sessions, publisher)
    callback = MetricsCallback(
        run_id=run_id, sessions=sessions, publisher=publisher, lease=lease, named=named_values(spec)
    )
    trainer = build_trainer(setup, spec, callback)
    fit(trainer, checkpoint, callback)
    if lease.lost or callback.handed_back:  # another worker owns it now, or takes it from the queue
        return RunStatus.interrupted
    if callback.cancelled:
        return RunStatus.cancelled
    details = final_evaluation(trainer, setup, spec, callback, publisher)
    if callback.stopped:
        details["stopped_at_step"] = trainer.state.global_step
    save_results(setup, spec, run_dir, sessions, publisher, details)
    return RunStatus.stopped if callback.stopped else RunStatus.succeeded
