"""Each worker says who it is, what it serves and what it is doing, in Redis, every few seconds.

A worker's record expires when its heartbeats stop, so the workers view shows only live ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

import redis

from app.config import get_settings
from app.contracts.workers import GpuInfo, TaskInfo, WorkerRecord
from app.workers import HEARTBEAT_S, worker_key

log = logging.getLogger(__name__)


def gpus() -> list[GpuInfo]:
    """The GPUs this process can see, with free and total memory."""
    import torch

    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            found.append(GpuInfo(index=index, name=torch.cuda.get_device_name(index), free=free, total=total))
    return found


class Heartbeat:
    """Writes the worker's record now and then every HEARTBEAT_S seconds, until stopped."""

    def __init__(self, name: str, queues: list[str]) -> None:
        self.record = WorkerRecord(
            name=name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=queues,
            started=time.time(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        self.client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="loradeck-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def describe_devices(self) -> None:
        """GPUs, and the memory per GPU this worker offers to runs (what scheduling compares estimates with)."""
        try:
            found = gpus()
        except Exception as exc:  # a broken driver must not stop the worker from serving
            log.warning("could not list GPUs: %s", exc)
            found = []
        offer = get_settings().worker_memory_gb
        self.record.gpus = found
        self.record.gpu_count = len(found)
        own = min((gpu.total for gpu in found), default=None)
        self.record.memory_per_gpu = int(offer * 1024**3) if offer else own

    def set_task(self, task: TaskInfo | None) -> None:
        self.record.task = task
        self.beat()

    def beat(self) -> None:
        try:
            self.record.seen = time.time()
            ttl = int(3 * HEARTBEAT_S)
            self.client.set(worker_key(self.record.name), self.record.model_dump_json(exclude={"age"}), ex=ttl)
        except redis.RedisError as exc:
            log.warning("worker heartbeat not written: %s", exc)

    def _warm_up(self) -> None:
        # The web waits for inspect answers: import the heavy libraries now, not on the first request.
        try:
            import worker.data.describe  # noqa: F401
            import worker.engine.estimate  # noqa: F401
        except Exception as exc:
            log.warning("inspect warm-up failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.client.delete(worker_key(self.record.name))

    def _loop(self) -> None:
        if "inspect" in self.record.queues:
            self._warm_up()
        if self.record.gpu_count is None:
            self.describe_devices()
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(HEARTBEAT_S)
