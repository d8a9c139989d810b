"""Checks before a run is queued that need the model itself: the module names a spec adapts.

The web cannot build a model (it imports no ML library), so it asks an inspect worker, as the estimate
does: the worker builds the model's skeleton from config.json and refuses names it lacks, listing the
model's own. A spec that names no module (target_modules all-linear) needs no round trip.
"""

from __future__ import annotations

import logging

import redis
from kombu.exceptions import OperationalError

from app.config import get_settings
from app.queue import ESTIMATE_TASK, InspectUnavailable, Queue, ask_inspector
from app.schemas import RunSpec
from app.workers import list_workers

log = logging.getLogger(__name__)
MODULE_FIELDS = ("target_modules", "modules_to_save", "feedforward_modules")


def names_modules(spec: RunSpec) -> bool:
    """Whether the spec names modules that a model may lack (all-linear fits every model)."""
    targets = spec.method != "prompt_tuning" and spec.target_modules != ["all-linear"]
    return targets or bool(spec.modules_to_save) or bool(spec.feedforward_modules)


def inspector_online() -> bool:
    try:
        client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return any(Queue.inspect.value in record.get("queues", []) for record in list_workers(client))
        finally:
            client.close()
    except redis.RedisError:
        return False


def module_name_problems(spec: RunSpec) -> dict[str, str]:
    """Field -> why the model lacks the modules it names, from an inspect worker. Without a worker online
    (or one that cannot read the model) nothing is refused here: the training worker checks the same names
    before it loads any weight."""
    if not names_modules(spec) or not inspector_online():
        return {}
    try:
        answer = ask_inspector(ESTIMATE_TASK, spec.model_dump(mode="json"))
    except (InspectUnavailable, OperationalError, redis.RedisError, OSError) as exc:
        log.info("module names not checked before queueing: %s", exc)
        return {}
    error = str(answer.get("error") or "")
    field, _, _ = error.partition(":")
    if not answer.get("ok") and field in MODULE_FIELDS:
        return {field: error}
    return {}
