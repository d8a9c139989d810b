"""Task queues. The web sends tasks by name, so it never imports the worker or any ML library."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from celery import Celery

from app.config import Settings, get_settings
from app.contracts.completions import CompletionJob
from app.contracts.datasets import DescribeAnswer, DescribeRequest
from app.contracts.estimate import EstimateAnswer
from app.contracts.playground import PlaygroundRequest
from app.errors import Unavailable


class Queue(StrEnum):
    train = "train"  # one process per GPU, one run at a time
    merge = "merge"  # CPU and RAM work: merges and GGUF exports
    inspect = "inspect"  # quick answers the web waits for: estimates, dataset descriptions
    generate = "generate"  # the playground's answers; keeps models loaded between requests


TRAIN_TASK = "loradeck.train_run"
MERGE_TASK = "loradeck.merge_artifact"
ESTIMATE_TASK = "loradeck.estimate"
DESCRIBE_DATASET_TASK = "loradeck.describe_dataset"
GENERATE_TASK = "loradeck.playground"
COMPLETION_TASK = "loradeck.completion"
EXPORT_TASK = "loradeck.export_gguf"
INSPECT_MARGIN_S = 15.0  # beyond the inspection time limit: the queue, a child process starting, the answer

# A run can train for days; Redis re-delivers an unacknowledged task after the visibility timeout,
# so it must outlast the longest run (the database claim still stops a second copy from training).
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        # Only the inspect tasks keep results (the web waits for them); progress never goes through Celery.
        "result_backend": settings.redis_url,
        "result_expires": 600,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": Queue.train.value,
        "task_routes": {
            TRAIN_TASK: {"queue": Queue.train.value},
            MERGE_TASK: {"queue": Queue.merge.value},
            EXPORT_TASK: {"queue": Queue.merge.value},
            ESTIMATE_TASK: {"queue": Queue.inspect.value},
            DESCRIBE_DATASET_TASK: {"queue": Queue.inspect.value},
            GENERATE_TASK: {"queue": Queue.generate.value},
            COMPLETION_TASK: {"queue": Queue.generate.value},
        },
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # Every worker also listens on a queue of its own ("<name>.dq2"): a run pinned to a worker, or one
        # that only some workers can hold, is sent there (worker/runtime/scheduling.py).
        "worker_direct": True,
    }


@lru_cache
def get_celery() -> Celery:
    # Imported on first use: the web starts faster without loading Celery until it sends a task.
    from celery import Celery

    app = Celery("loradeck")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_train(run_id: str, worker: str = "") -> None:
    """Queue a run: on the shared train queue, or straight to the worker it is pinned to."""
    if worker:
        from celery.utils.nodenames import worker_direct

        get_celery().send_task(TRAIN_TASK, args=[run_id], queue=worker_direct(worker))
    else:
        get_celery().send_task(TRAIN_TASK, args=[run_id], queue=Queue.train.value)


def enqueue_merge(artifact_id: str) -> None:
    get_celery().send_task(MERGE_TASK, args=[artifact_id], queue=Queue.merge.value)


def enqueue_export(artifact_id: str) -> None:
    get_celery().send_task(EXPORT_TASK, args=[artifact_id], queue=Queue.merge.value)


def enqueue_generation(generation_id: str, request: PlaygroundRequest) -> None:
    # A playground answer nobody reads a minute later is worth nothing: expire it rather than queue it.
    payload = request.model_dump(mode="json")
    get_celery().send_task(GENERATE_TASK, args=[generation_id, payload], queue=Queue.generate.value, expires=60)


PENDING_KEY = "loradeck:completions:pending"  # a sorted set: request id -> when it was queued
# A request still counted this long after it was queued is taken as lost (a worker killed while answering it): the
# web stops waiting for it then, and its task expires from the queue. The longest answer takes minutes on a CPU.
PENDING_STALE_S = 600.0


class QueueFull(Unavailable):
    """As many completion requests as `openai_pending_requests` allows are queued or being answered."""


def enqueue_completion(request_id: str, job: CompletionJob, *, bound: int) -> None:
    """Queue an OpenAI completion on the generate queue, counted among the pending requests; QueueFull when
    `bound` are already pending (the generate worker answers one at a time)."""
    now = time.time()
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
    try:
        pipe = client.pipeline()
        pipe.zremrangebyscore(PENDING_KEY, 0, now - PENDING_STALE_S)
        pipe.zadd(PENDING_KEY, {request_id: now})
        pipe.zcard(PENDING_KEY)
        pending = int(pipe.execute()[-1])
        if pending > bound:
            client.zrem(PENDING_KEY, request_id)
            raise QueueFull(
                f"{pending - 1} completion requests are already waiting for the generate worker, as many as "
                "LORADECK_OPENAI_PENDING_REQUESTS allows: retry shortly"
            )
        get_celery().send_task(
            COMPLETION_TASK,
            args=[request_id, job.model_dump(mode="json")],
            queue=Queue.generate.value,
            expires=PENDING_STALE_S,
        )
    except QueueFull:
        raise
    except BaseException:
        client.zrem(PENDING_KEY, request_id)
        raise
    finally:
        client.close()


def release_completion(client: redis.Redis, request_id: str) -> None:
    """The request is answered (or given up): it no longer counts against the bound."""
    client.zrem(PENDING_KEY, request_id)


@contextmanager
def reaching_redis(undone: str) -> Iterator[None]:
    """Redis (the broker, or the live streams) unreachable inside this block: Unavailable, naming what did not
    happen. The one place that decides what "Redis is down" means for a request."""
    from kombu.exceptions import OperationalError  # celery's, imported with it on first use

    try:
        yield
    except (redis.RedisError, OSError, OperationalError) as exc:
        raise Unavailable(f"Redis is unreachable, so {undone}: {exc or type(exc).__name__}") from exc


def ask_inspector(task: str, payload: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
    """Run a quick inspect task on a worker and wait for its answer (the web never loads models itself).
    Unavailable when no worker answers in time, or Redis cannot be reached."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    timeout = timeout or get_settings().inspect_time_limit_s + INSPECT_MARGIN_S
    with reaching_redis("no worker was asked"):
        result = get_celery().send_task(task, args=[payload], queue=Queue.inspect.value, ignore_result=False)
        try:
            answer = result.get(timeout=timeout, propagate=True)
        except CeleryTimeout as exc:
            result.revoke()
            raise Unavailable(
                f"no worker answered on the {Queue.inspect.value} queue within {timeout:.0f} s: "
                "start one with `loradeck up` or `loradeck worker --queues inspect`"
            ) from exc
        finally:
            result.forget()
    return dict(answer)


def ask_estimate(spec: dict[str, Any]) -> EstimateAnswer:
    """An inspect worker's estimate of a spec (given as JSON), or its refusal."""
    return EstimateAnswer.model_validate(ask_inspector(ESTIMATE_TASK, spec))


def ask_description(request: DescribeRequest) -> DescribeAnswer:
    """An inspect worker's check and description of a dataset file."""
    return DescribeAnswer.model_validate(ask_inspector(DESCRIBE_DATASET_TASK, request.model_dump(mode="json")))
