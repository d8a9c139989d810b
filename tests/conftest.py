"""Shared fixtures: a real redis-server, a fresh data dir and database, and the whole stack as processes."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from app.formatting import FINAL_STATUSES
from app.processes import free_port, start_redis
from tests.processes import REPO, Processes

# Set before any test imports torch: spinning OpenMP threads crawl on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# A PostgreSQL server's maintenance database (scripts/with-postgres.sh sets it): each test, or each module for
# the process stacks, gets a database of its own there. Unset: a fresh SQLite file in the test's data dir.
TEST_DATABASE_URL = os.environ.get("LORADECK_TEST_DATABASE_URL", "")
DATABASE_FIXTURES = {"database_url", "module_database_url"}
GGUF_FIXTURES = {"exporter", "gguf_stack"}
T = TypeVar("T")
# A run that only trains, quickly: small batches, no checkpoints, no scoring of base and adapter, and its eval
# data (the sample's, unless a test names other) evaluated once at the end rather than five times over the run.
QUICK_RUN = {
    "eval_steps": 0,
    "per_device_train_batch_size": 2,
    "max_seq_length": 64,
    "save_steps": 0,
    "task_eval_rows": 0,
    "regression_prompts": [],
}


ENGINE_TESTS = REPO / "tests" / "worker"
BROWSER_TESTS = REPO / "tests" / "browser"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `db` every test that opens a database, so `pytest -m db` runs just those against PostgreSQL, and
    `engine` the in-process training-engine tests (tests/worker), whose database work is the run rows the
    stack, fault and journey tests also drive through the real processes; `gguf` those that need llama.cpp
    (the GGUF export's fixtures); `browser` every test in tests/browser (they stay on SQLite)."""
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
        if GGUF_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gguf)
        if item.path.is_relative_to(ENGINE_TESTS):
            item.add_marker(pytest.mark.engine)
        if item.path.is_relative_to(BROWSER_TESTS):
            item.add_marker(pytest.mark.browser)


@contextmanager
def fresh_database() -> Iterator[str]:
    """The DATABASE_URL of a database nobody else uses: "" (SQLite in the data dir) without
    LORADECK_TEST_DATABASE_URL; else a new PostgreSQL database, dropped afterwards with whatever still
    connects to it."""
    if not TEST_DATABASE_URL:
        yield ""
        return
    from sqlalchemy import create_engine, make_url, pool, text

    server = make_url(TEST_DATABASE_URL)
    name = f"loradeck_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh database for one test (see `fresh_database`)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url() -> Iterator[str]:
    """A fresh database for one test module (see `fresh_database`)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole test session."""
    port = free_port()
    process = start_redis(port=port, directory=tmp_path_factory.mktemp("redis"), persist=False)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def _clear_caches() -> None:
    from app.config import get_settings
    from app.db import get_engine, get_sessionmaker
    from app.queue import get_celery

    for cached in (get_settings, get_engine, get_sessionmaker, get_celery):
        cached.cache_clear()


@pytest.fixture
def loradeck_env(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """Settings pointing at a fresh data dir, a fresh migrated database and the session's Redis; models and
    datasets that tests write to their temporary directories are allowed."""
    env = {
        "LORADECK_DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "LORADECK_MODEL_ROOTS": str(tmp_path_factory.getbasetemp()),
        "LORADECK_DATASET_ROOTS": str(tmp_path_factory.getbasetemp()),
        # The Host that FastAPI's TestClient sends; a real browser on loopback needs no such setting.
        "LORADECK_ALLOWED_HOSTS": "testserver",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear_caches()
    redis.Redis.from_url(redis_url).flushdb()
    from app.db import migrate

    migrate()
    yield env
    from app.db import get_engine

    get_engine().dispose()
    _clear_caches()


@pytest.fixture
def web_url(loradeck_env: dict[str, str]) -> Iterator[str]:
    """The web app alone, served by uvicorn on a thread of the test's own process with its settings; its URL."""
    import uvicorn

    from app.main import app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def stack_env(data_dir: Path, redis_url: str, database_url: str, port: int) -> dict[str, str]:
    """The environment of a stack's processes: the test's own, plus their data dir, a Redis database of their own
    (picked by the web's `port`, so queued tasks never leak between stacks) and `database_url`."""
    return {
        **os.environ,
        "LORADECK_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + f"/{port % 15 + 1}",
        "DATABASE_URL": database_url,
        "PYTHONUNBUFFERED": "1",
    }


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll until `predicate` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    data_dir: Path
    worker_log: Path
    pids: dict[str, int] = field(default_factory=dict)  # the processes by role: web, trainer, inspector, generator

    @property
    def database_url(self) -> str:
        """The stack's database, for a test that writes to it directly."""
        return self.env["DATABASE_URL"] or f"sqlite:///{self.data_dir / 'loradeck.db'}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def start_run(self, **spec: Any) -> dict[str, Any]:
        """Submit a run through the API: QUICK_RUN, with `spec` over it."""
        response = httpx.post(self.url + "/api/v1/runs", json=QUICK_RUN | spec, timeout=30)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def wait_run(
        self, run_id: str, until: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 240
    ) -> dict[str, Any]:
        """The run as the API gives it, once `until` holds of it (by default: once it has ended)."""
        check = until or (lambda run: run["status"] in FINAL_STATUSES)

        def reached() -> dict[str, Any] | None:
            run = dict(httpx.get(f"{self.url}/api/v1/runs/{run_id}", timeout=30).json())
            return run if check(run) else None

        return wait_for(reached, timeout, f"run {run_id}", every=0.3)


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_database_url: str
) -> Iterator[Stack]:
    """The whole thing as a user runs it: migrations, a Celery worker process and uvicorn, as subprocesses.
    A test module may set `STACK_ENV`, a dict of settings, to change the stack's environment."""
    root = tmp_path_factory.mktemp("stack")
    port = free_port()
    module_env = getattr(request.module, "STACK_ENV", {})
    env = stack_env(root / "data", redis_url, module_database_url, port) | {
        "LORADECK_MAX_UPLOAD_BYTES": str(5 * 1024**2),
        "LORADECK_MODEL_ROOTS": str(tmp_path_factory.getbasetemp()),
        "LORADECK_DATASET_ROOTS": str(tmp_path_factory.getbasetemp()),
        **module_env,
    }
    for roots in ("LORADECK_MODEL_ROOTS", "LORADECK_DATASET_ROOTS"):  # a module's roots add to the temp folder
        if roots in module_env:
            env[roots] = f"{tmp_path_factory.getbasetemp()},{env[roots]}"
    processes = Processes(root, env)
    processes.migrate()
    try:
        pids = {
            "trainer": processes.start_worker(log="worker.log").pid,
            "inspector": processes.start_worker("--queues", "inspect", log="worker.log").pid,
            "generator": processes.start_worker("--queues", "generate", log="worker.log").pid,
            "web": processes.start_web(port).pid,
        }
        yield Stack(
            url=f"http://127.0.0.1:{port}", env=env, data_dir=root / "data", worker_log=root / "worker.log", pids=pids
        )
    finally:
        processes.close()


@pytest.fixture(scope="module")
def exporter() -> None:
    """Fail at once, saying how to install them, when llama-cpp-python or its converter is missing."""
    from worker.export.converter import ConverterMissing, converter_dir

    try:
        import llama_cpp  # noqa: F401

        converter_dir()
    except (ImportError, ConverterMissing) as exc:
        pytest.fail(f"the GGUF export is not installed (`make gguf`): {exc}")


@pytest.fixture(scope="module")
def gguf_stack(exporter: None, stack: Stack) -> Stack:
    """The stack, once llama-cpp-python and its converter are installed (`make gguf`); fails saying so if not."""
    return stack
