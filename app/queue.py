"""Task queues. The web sends tasks by name, so it never imports the worker or any ML library."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from typing import Any

from celery import Celery

from app.config import Settings, get_settings


class Queue(StrEnum):
    train = "train"
    merge = "merge"


TRAIN_TASK = "loradeck.train_run"
MERGE_TASK = "loradeck.merge_artifact"

# A run can train for days; Redis re-delivers an unacknowledged task after the visibility timeout,
# so it must outlast the longest run (the database claim still stops a second copy from training).
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": Queue.train.value,
        "task_routes": {TRAIN_TASK: {"queue": Queue.train.value}, MERGE_TASK: {"queue": Queue.merge.value}},
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


@lru_cache
def get_celery() -> Celery:
    app = Celery("loradeck")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_train(run_id: str) -> None:
    get_celery().send_task(TRAIN_TASK, args=[run_id], queue=Queue.train.value)


def enqueue_merge(artifact_id: str) -> None:
    get_celery().send_task(MERGE_TASK, args=[artifact_id], queue=Queue.merge.value)
