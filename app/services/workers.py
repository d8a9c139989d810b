"""The workers online, as their heartbeats in Redis describe them."""

from __future__ import annotations

import redis

from app.config import Settings
from app.contracts.workers import WorkerRecord
from app.queue import reaching_redis
from app.workers import list_workers


def online(*, settings: Settings) -> list[WorkerRecord]:
    """Host, queues, GPUs with free memory and the task each live worker is running."""
    with reaching_redis("the workers cannot be listed"):
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        try:
            return list_workers(client)
        finally:
            client.close()
