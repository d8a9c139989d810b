"""Which worker trains a run: one that can hold it, in queue order.

Every training worker takes runs from the shared `train` queue in order. Before claiming one it checks that
it can hold it: the run's pinned worker (RunSpec.worker), its GPU count (RunSpec.gpus) and its pre-flight
memory estimate per GPU (worker.engine.estimate) against what this worker offers. A run it cannot hold goes on to
the direct queue of a live worker that can (Celery's worker_direct), or, when no worker online could ever
hold it, fails with the reason and the largest offer, instead of waiting forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from app import events, runs
from app.config import get_settings
from app.contracts.events import DoneEvent, StatusEvent
from app.contracts.workers import WorkerRecord
from app.db import get_sessionmaker
from app.errors import InvalidInput
from app.models import RunStatus
from app.preflight import check_inputs, stored_spec
from app.queue import TRAIN_TASK, Queue, get_celery
from app.schemas import RunSpec
from app.workers import list_workers

log = logging.getLogger(__name__)
GIB = 1024**3


@dataclass(frozen=True)
class Need:
    worker: str
    gpus: int
    memory: int  # bytes per GPU (each DDP process holds a whole replica)


def need_of(spec: RunSpec) -> Need:
    from worker.engine.estimate import estimate_spec

    try:
        memory = estimate_spec(spec).memory.total
    except Exception as exc:  # no config.json to read (a hub id offline): the run's own load will say so
        log.info("no memory estimate for the run (%s); placing it by GPU count only", exc)
        memory = 0
    return Need(worker=spec.worker, gpus=spec.gpus, memory=memory)


def why_not(need: Need, record: WorkerRecord) -> str | None:
    """Why the worker of this heartbeat record cannot hold a run with this need; None when it can."""
    if need.worker and need.worker != record.name:
        return f"the run is pinned to {need.worker}"
    if Queue.train.value not in record.queues:
        return "it does not serve the train queue"
    gpus = record.gpu_count or 0
    if gpus and gpus < need.gpus:  # a worker without GPUs runs its processes on the CPU
        return f"the run needs {need.gpus} GPUs and {record.name} has {gpus}"
    offer = record.memory_per_gpu
    if offer and need.memory > offer:
        needed, offered = need.memory / GIB, offer / GIB
        return f"the run needs about {needed:.2f} GiB per GPU and {record.name} offers {offered:.2f} GiB"
    return None


def place(run_id: str, me: WorkerRecord) -> bool:
    """True when this worker (described by its heartbeat record `me`) should train the run now; otherwise
    the run has been passed on to a worker that can hold it, or failed with the reason none can."""
    with get_sessionmaker()() as session:
        run = runs.get_run(session=session, run_id=run_id)
        if run.status not in (RunStatus.queued, RunStatus.interrupted):
            return True  # the claim decides (a duplicate message, a cancelled run)
        raw_spec = dict(run.spec)
    if not runnable(run_id, raw_spec):  # its dataset or base model went away (or out of the roots) since
        return False
    spec = stored_spec(raw_spec)
    # The estimate (a model skeleton on the meta device) is only worth making when memory is limited.
    need = need_of(spec) if me.memory_per_gpu else Need(worker=spec.worker, gpus=spec.gpus, memory=0)
    reason = why_not(need, me)
    if reason is None:
        return True
    if not need.memory:
        need = need_of(spec)
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
    try:
        others = [record for record in list_workers(client) if record.name != me.name]
    finally:
        client.close()
    able = [record for record in others if why_not(need, record) is None]
    if need.worker and not able:
        able = [WorkerRecord(name=need.worker)]  # pinned to a worker not online: it takes the run when it starts
    if not able:
        offers = [record for record in [me, *others] if Queue.train.value in record.queues]
        reasons = "; ".join(why_not(need, record) or "" for record in offers)
        error = f"no worker online can hold this run: {reasons}"
        log.warning("run %s: %s", run_id, error)
        with get_sessionmaker()() as session:
            failed = runs.fail_unplaceable(session=session, run_id=run_id, error=error)
        if failed:
            _announce_failure(run_id, error)
        return False
    target = min(able, key=lambda record: record.task is not None).name  # an idle one first
    log.info("run %s goes to %s: %s", run_id, target, reason)
    send_to_worker(run_id, target)
    return False


def runnable(run_id: str, raw_spec: dict[str, Any]) -> bool:
    """Whether a waiting run can still start: its spec reads back and passes the pre-flight check of its inputs
    (a file deleted since it was queued, or now outside the roots, does not). A run that cannot is failed, saying
    why; False then."""
    try:
        check_inputs(stored_spec(raw_spec), get_settings(), enforce_roots=True)
    except InvalidInput as exc:
        fail_unrunnable(run_id, f"the run cannot start: {exc}")
        return False
    return True


def fail_unrunnable(run_id: str, error: str) -> bool:
    """Fail a waiting run that can no longer start, saying why."""
    with get_sessionmaker()() as session:
        failed = runs.fail_unplaceable(session=session, run_id=run_id, error=error)
    if failed:
        log.warning("run %s: %s", run_id, error)
        _announce_failure(run_id, error)
    return failed


def _announce_failure(run_id: str, error: str) -> None:
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        sender = events.Sender()
        for event in (StatusEvent(status="failed", error=error), DoneEvent(status="failed")):
            events.publish(client, run_id, event, maxlen=settings.stream_maxlen, once=(sender, sender.next_number()))
    except redis.RedisError as exc:  # the page still shows the failure from the database
        log.warning("run %s: failure not announced live: %s", run_id, exc)
    finally:
        client.close()


def send_to_worker(run_id: str, worker: str) -> None:
    from celery.utils.nodenames import worker_direct

    get_celery().send_task(TRAIN_TASK, args=[run_id], queue=worker_direct(worker))
