"""A worker's heartbeat record in Redis (worker.runtime.registry writes it, the web and placement read it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class GpuInfo(BaseModel):
    index: int
    name: str
    free: int = Field(description="Bytes free when the worker started.")
    total: int


class TaskInfo(BaseModel):
    name: str
    args: list[Any] = Field(default_factory=list)
    since: float


class WorkerRecord(BaseModel):
    name: str = Field(description="The Celery node name (e.g. worker-gpu0@host): what RunSpec.worker pins to.")
    host: str = ""
    pid: int = 0
    queues: list[str] = Field(default_factory=list)
    started: float = 0.0
    task: TaskInfo | None = None
    cuda_visible_devices: str | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)
    gpu_count: int | None = Field(default=None, description="None until the worker has looked at its GPUs.")
    memory_per_gpu: int | None = Field(default=None, description="Bytes per GPU it offers runs; None: no limit.")
    seen: float = 0.0
    age: float = Field(default=0.0, description="Seconds since its last heartbeat, when read.")
