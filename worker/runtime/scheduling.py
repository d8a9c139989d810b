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
from pydantic import ValidationError

from app import events, runs
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import RunStatus
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
        memory = int(estimate_spec(spec)["memory"]["total"])
    except Exception as exc:  # no config.json to read (a hub id offline): the run's own load will say so
        log.info("no memory estimate for the run (%s); placing it by GPU count only", exc)
        memory = 0
    return Need(worker=spec.worker, gpus=spec.gpus, memory=memory)


def why_not(need: Need, record: dict[str, Any]) -> str | None:
    """Why the worker of this heartbeat record cannot hold a run with this need; None when it can."""
    if need.worker and need.worker != record["name"]:
        return f"the run is pinned to {need.worker}"
    if Queue.train.value not in record.get("queues", []):
        return "it does not serve the train queue"
    gpus = record.get("gpu_count", 0)
    if gpus and gpus < need.gpus:  # a worker without GPUs runs its processes on the CPU
        return f"the run needs {need.gpus} GPUs and {record['name']} has {gpus}"
    offer = record.get("memory_per_gpu")
    if offer and need.memory > offer:
        needed, offered = need.memory / GIB, offer / GIB
        return f"the run needs about {needed:.2f} GiB per GPU and {record['name']} offers {offered:.2f} GiB"
    return None


def place(run_id: str, me: dict[str, Any]) -> bool:
    """True when this worker (described by its heartbeat record `me`) should train the run now; otherwise
    the run has been passed on to a worker that can hold it, or failed with the reason none can."""
    with get_sessionmaker()() as session:
        run = runs.get_run(session=session, run_id=run_id)
        if run.status not in (RunStatus.queued, RunStatus.interrupted):
            return True  # the claim decides (a duplicate message, a cancelled run)
        try:
            spec = RunSpec.model_validate(run.spec)
        except ValidationError as exc:  # its dataset or base model went away (or out of the roots) since
            fail_unrunnable(run_id, exc)
            return False
    # The estimate (a model skeleton on the meta device) is only worth making when memory is limited.
    need = need_of(spec) if me.get("memory_per_gpu") else Need(worker=spec.worker, gpus=spec.gpus, memory=0)
    reason = why_not(need, me)
    if reason is None:
        return True
    if not need.memory:
        need = need_of(spec)
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
    try:
        others = [record for record in list_workers(client) if record["name"] != me["name"]]
    finally:
        client.close()
    able = [record for record in others if why_not(need, record) is None]
    if need.worker and not able:
        able = [{"name": need.worker}]  # pinned to a worker that is not online: it takes the run when it starts
    if not able:
        offers = [record for record in [me, *others] if Queue.train.value in record.get("queues", [])]
        reasons = "; ".join(why_not(need, record) or "" for record in offers)
        error = f"no worker online can hold this run: {reasons}"
        log.warning("run %s: %s", run_id, error)
        with get_sessionmaker()() as session:
            failed = runs.fail_unplaceable(session=session, run_id=run_id, error=error)
        if failed:
            _announce_failure(run_id, error)
        return False
    target = min(able, key=lambda record: record.get("task") is not None)["name"]  # an idle one first
    log.info("run %s goes to %s: %s", run_id, target, reason)
    send_to_worker(run_id, target)
    return False


def unrunnable_reason(exc: ValidationError) -> str:
    """What in a stored spec no longer holds, each problem naming its field and path."""
    problems = [str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()]
    return "the run cannot start: " + "; ".join(problems)


def fail_unrunnable(run_id: str, exc: ValidationError) -> bool:
    """Fail a waiting run whose spec no longer validates (a file deleted since it was queued), saying why."""
    error = unrunnable_reason(exc)
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
        for event, data in (("status", {"status": "failed", "error": error}), ("done", {"status": "failed"})):
            events.publish(client, run_id, event, data, maxlen=settings.stream_maxlen)
    except redis.RedisError as exc:  # the page still shows the failure from the database
        log.warning("run %s: failure not announced live: %s", run_id, exc)
    finally:
        client.close()


def send_to_worker(run_id: str, worker: str) -> None:
    from celery.utils.nodenames import worker_direct

    get_celery().send_task(TRAIN_TASK, args=[run_id], queue=worker_direct(worker))
