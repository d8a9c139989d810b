"""The worker's Celery app. Start a worker with:

    python -m celery -A worker.runtime.celery_app worker -Q train,merge --pool solo -c 1

It shares its configuration with the web (`app.queue.celery_config`), so task names, queues and the
broker always agree. No ML library is imported here: the tasks import them when they run.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import Celery, signals

from app.config import get_settings
from app.contracts.workers import TaskInfo, WorkerRecord
from app.queue import celery_config

# Read by OpenMP when torch loads, so it must be set before the first task imports torch. Spinning
# threads collapse when the worker shares its cores (web, Redis, a second worker): on a busy 2-core box
# the default 60-step QLoRA run of the tiny model took 85 s with spinning threads, 11 s with passive ones,
# and about 10% longer when the cores are free. An operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = Celery("loradeck", include=["worker.runtime.tasks"])
app.conf.update(celery_config(get_settings()))
app.conf.update(
    # Redis may be away for a while (a restart, a failover): keep reconnecting instead of exiting after
    # 100 tries; the run in progress trains on meanwhile, since it needs only the database.
    broker_connection_max_retries=None,
    # A lost broker connection must not cancel the run in progress (Celery 6 will default to cancelling):
    # its message stays unacknowledged in Redis and the database claim keeps a redelivery from training it.
    worker_cancel_long_running_tasks_on_connection_loss=False,
)


_heartbeat: Any = None
_reaper: Any = None


@signals.worker_ready.connect
def _register(sender: Any, **_: Any) -> None:
    """Announce this worker (queues, GPUs) and keep announcing it while it lives; watch for lost runs."""
    global _heartbeat, _reaper
    from worker.runtime.reaper import Reaper
    from worker.runtime.registry import Heartbeat

    queues = sorted(queue.name for queue in sender.task_consumer.queues if not queue.name.endswith(".dq2"))
    _heartbeat = Heartbeat(sender.hostname, queues)
    _heartbeat.start()
    # Every worker reaps, so a lost run is found while any worker lives; their UPDATEs are conditional.
    _reaper = Reaper()
    _reaper.start()
    if "inspect" in queues:  # dataset checks fork from a forkserver: start it before the first upload
        from worker.runtime.bounded import warm

        threading.Thread(target=warm, name="loradeck-forkserver", daemon=True).start()


def worker_record() -> WorkerRecord:
    """This worker's heartbeat record (name, queues, GPUs, memory offered), for placing runs."""
    if _heartbeat is None:  # not a Celery worker (a task run in-process): it holds whatever it is given
        return WorkerRecord(name="", queues=["train"], gpu_count=0, memory_per_gpu=None)
    if _heartbeat.record.gpu_count is None:
        _heartbeat.describe_devices()
    return _heartbeat.record.model_copy()


@signals.worker_shutting_down.connect
def _hand_back_the_run(**_: Any) -> None:
    """Warm shutdown: the run in progress checkpoints at its next step and goes back to the queue."""
    from worker.runtime.lease import WORKER_STOPPING

    WORKER_STOPPING.set()


@signals.worker_shutdown.connect
def _unregister(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.task_prerun.connect
def _task_started(task: Any = None, args: Any = None, **_: Any) -> None:
    if _heartbeat is not None and task is not None:
        _heartbeat.set_task(TaskInfo(name=task.name, args=list(args or []), since=time.time()))


@signals.task_postrun.connect
def _task_finished(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.set_task(None)
