"""The workers online, as their heartbeats in Redis describe them (see worker/runtime/registry.py)."""

from __future__ import annotations

import json
import time

import redis

from app.contracts.workers import WorkerRecord

HEARTBEAT_S = 5.0
PREFIX = "loradeck:workers:"


def worker_key(name: str) -> str:
    return PREFIX + name


def list_workers(client: redis.Redis) -> list[WorkerRecord]:
    """Live workers, by name, each with its age in seconds since the last heartbeat."""
    workers = []
    for key in client.scan_iter(match=PREFIX + "*", count=200):
        raw = client.get(key)
        if raw is None:
            continue
        record = WorkerRecord.model_validate(json.loads(raw))
        record.age = max(0.0, time.time() - record.seen)
        workers.append(record)
    return sorted(workers, key=lambda record: record.name)
