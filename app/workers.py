"""The workers online, as their heartbeats in Redis describe them (see worker/runtime/registry.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

HEARTBEAT_S = 5.0
PREFIX = "loradeck:workers:"


def worker_key(name: str) -> str:
    return PREFIX + name


def list_workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Live workers, by name, each with its age in seconds since the last heartbeat."""
    workers = []
    for key in client.scan_iter(match=PREFIX + "*", count=200):
        raw = client.get(key)
        if raw is None:
            continue
        record = json.loads(raw)
        record["age"] = max(0.0, time.time() - float(record.get("seen", 0)))
        workers.append(record)
    return sorted(workers, key=lambda record: record["name"])
