"""A stack of real processes that a fault test breaks on purpose: its own redis-server (persistent, so the
queue survives a restart), Celery workers and uvicorn as subprocesses, and a short lease so a lost worker
is noticed in seconds. The test process reads and writes the same database and Redis directly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.config import get_settings
from app.db import migrate
from app.models import Run
from app.processes import free_port, start_redis
from app.queue import enqueue_train
from app.workers import list_workers
from tests.conftest import _clear_caches, wait_for
from tests.processes import Processes
from tests.worker.conftest import create_run, read_events, read_run, train_points

LEASE_TIMEOUT_S = 6  # the reapers then look every 2 s and the lease is renewed every second


# The runs a test creates straight in the database, unless it says otherwise (on top of tests/worker/conftest.py's
# `run_spec`): a few seconds of training, a checkpoint every 10 steps.
DATABASE_RUN = {
    "method": "lora",
    "precision": "fp32",
    "max_steps": 60,
    "save_steps": 10,
    "per_device_train_batch_size": 2,
    "max_seq_length": 64,
    "learning_rate": 2e-3,
}
# What a test submits through the API, its name, steps and checkpoints aside; the rest are RunSpec's defaults.
# eval_steps 0: the sample's eval file once at the end, not five passes over it in every long fault run.
API_RUN = {
    "method": "lora",
    "precision": "fp32",
    "per_device_train_batch_size": 2,
    "max_seq_length": 64,
    "eval_steps": 0,
}


class FaultStack:
    def __init__(self, root: Path, env: dict[str, str], redis_port: int) -> None:
        self.root, self.env, self.redis_port = root, env, redis_port
        self.processes = Processes(root, env)
        self.redis: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.web: subprocess.Popen[bytes] | None = None
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"

    # --- processes
    def start_redis(self) -> None:
        self.redis = start_redis(port=self.redis_port, directory=self.root / "redis", persist=True)

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.terminate()  # SIGTERM: Redis writes its append-only file and exits, as on a restart
        self.redis.wait(timeout=30)

    def start_worker(self, queues: str = "train,merge") -> subprocess.Popen[bytes]:
        worker = self.processes.start_worker("--queues", queues, log=f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        """Until `count` workers announce themselves (they have connected to Redis and serve their queues)."""
        client = redis.Redis.from_url(self.env["REDIS_URL"])

        def ready() -> bool:
            for worker in self.workers:
                assert worker.poll() is None, f"a worker exited:\n{self.worker_logs()}"
            return len(list_workers(client)) >= count

        wait_for(ready, timeout, f"{count} workers to start", every=0.25)
        client.close()

    def start_web(self) -> None:
        self.web = self.processes.start_web(self.web_port, log="web.log")

    def start_all(self, workers: int = 1) -> None:
        """`workers` training workers and the web, returned once the workers announce themselves."""
        for _ in range(workers):
            self.start_worker()
        self.start_web()
        self.wait_for_workers(workers)

    def kill(self, process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=30)

    def worker_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.root.glob("worker-*.log")))

    def close(self) -> None:
        self.processes.close(timeout=20)
        if self.redis is not None:
            if self.redis.poll() is None:
                self.redis.terminate()
            try:
                self.redis.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.redis.kill()

    # --- runs, read straight from the database and the run's directory
    def create_run(self, **fields: Any) -> str:
        return create_run(DATABASE_RUN, **fields)

    def submit(self, **fields: Any) -> str:
        """A run of `API_RUN` and `fields`, submitted as a user submits one; its id."""
        with self.client() as client:
            response = client.post("/api/v1/runs", json=API_RUN | fields)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def enqueue(self, run_id: str) -> None:
        enqueue_train(run_id)

    def run(self, run_id: str) -> Run:
        return read_run(run_id)

    def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout: float) -> Run:
        def reached() -> Run | None:
            run = self.run(run_id)
            return run if run.status in statuses else None

        try:
            return wait_for(reached, timeout, str(statuses))
        except TimeoutError:
            raise AssertionError(f"run is {self.run(run_id).status}, not {statuses}:\n{self.worker_logs()}") from None

    def train_steps(self, run_id: str) -> list[int]:
        return [point.step for point in train_points(run_id)]

    def train_log(self, run_id: str) -> str:
        path = get_settings().runs_dir / run_id / "train.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def starts(self, run_id: str) -> int:
        """How many times a worker began training the run (each claim writes one such line)."""
        return len(re.findall(rf"run {run_id} starts on ", self.train_log(run_id)))

    def logged_step(self, run_id: str) -> int:
        """The newest step train.log has a metric line for (written synchronously, as the step ends)."""
        steps = re.findall(r"\bstep (\d+) train loss", self.train_log(run_id))
        return int(steps[-1]) if steps else 0

    def events(self, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        return read_events(run_id)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture
def fault_stack(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultStack]:
    """Its own persistent Redis, a migrated database, and a short lease; processes are started by the test."""
    redis_port = free_port()
    env = {
        "LORADECK_DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DATABASE_URL": database_url,
        "LORADECK_MODEL_ROOTS": str(tmp_path_factory.getbasetemp()),
        "LORADECK_DATASET_ROOTS": str(tmp_path_factory.getbasetemp()),
        "LORADECK_LEASE_TIMEOUT_S": str(LEASE_TIMEOUT_S),
        "PYTHONUNBUFFERED": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear_caches()
    stack = FaultStack(tmp_path, {**os.environ, **env}, redis_port)
    stack.start_redis()
    migrate()
    try:
        yield stack
    finally:
        stack.close()
        from app.db import get_engine

        get_engine().dispose()
        _clear_caches()
