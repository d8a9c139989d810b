"""Two training workers on one shared data dir, each with its own scratch space: runs spread over both,
none trains twice, a pinned run trains only on its worker, and a run goes only to a worker that can hold it."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.processes import free_port
from tests.conftest import Stack, stack_env
from tests.processes import Processes

pytestmark = pytest.mark.slow
HOST = socket.gethostname()
QUICK = {"max_steps": 6, "method": "lora"}  # over Stack.start_run's QUICK_RUN


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_database_url: str
) -> Iterator[tuple[Stack, dict[str, subprocess.Popen[bytes]]]]:
    root = tmp_path_factory.mktemp("fleet")
    port = free_port()
    processes = Processes(root, stack_env(root / "shared-data", redis_url, module_database_url, port))
    processes.migrate()
    try:
        workers: dict[str, subprocess.Popen[bytes]] = {}
        # w1 offers 50 MiB per "GPU": enough for the quick runs, too little for the big one; w2 offers 4 GiB.
        for name, memory in (("w1", "0.05"), ("w2", "4")):
            scratch = root / f"scratch-{name}"
            scratch.mkdir()
            own = {"TMPDIR": str(scratch), "HF_HOME": str(scratch / "hf"), "LORADECK_WORKER_MEMORY_GB": memory}
            workers[name] = processes.start_worker("--queues", "train", "--name", name, log=f"{name}.log", env=own)
        processes.start_web(port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        expected = {f"w1@{HOST}", f"w2@{HOST}"}
        while {w["name"] for w in httpx.get(url + "/api/v1/workers", timeout=30).json()} != expected:
            assert time.monotonic() < deadline, "the two workers did not register"
            time.sleep(0.5)
        yield Stack(url=url, env=processes.env, data_dir=root / "shared-data", worker_log=root / "w1.log"), workers
    finally:
        processes.close()


def _trained_by(run: dict[str, Any], workers: dict[str, subprocess.Popen[bytes]]) -> str:
    pids = {f"{HOST}:{process.pid}": name for name, process in workers.items()}
    return pids[run["worker"]]


def _steps(stack: Stack, run_id: str) -> list[int]:
    points = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/metrics", timeout=30).json()
    return [point["step"] for point in points if point["kind"] == "train"]


def test_runs_spread_over_both_workers_and_none_trains_twice(fleet: tuple[Stack, dict[str, Any]]) -> None:
    stack, workers = fleet
    submitted = [stack.start_run(name=f"spread-{i}", **QUICK) for i in range(4)]
    finished = [stack.wait_run(run["id"]) for run in submitted]
    assert [run["status"] for run in finished] == ["succeeded"] * 4, [run["error"] for run in finished]
    assert {_trained_by(run, workers) for run in finished} == {"w1", "w2"}
    for run in finished:
        assert run["attempts"] == 0
        assert _steps(stack, run["id"]) == list(range(1, 7))
        log = (stack.data_dir / "runs" / run["id"] / "train.log").read_text(encoding="utf-8")
        assert log.count(f"run {run['id']} starts on") == 1


def test_a_pinned_run_trains_only_there_and_a_big_run_waits_for_the_worker_that_can_hold_it(
    fleet: tuple[Stack, dict[str, Any]],
) -> None:
    stack, workers = fleet
    busy = stack.start_run(name="pinned-w2", worker=f"w2@{HOST}", **(QUICK | {"max_steps": 40}))
    stack.wait_run(busy["id"], lambda run: run["status"] == "running", timeout=120)
    # w1 is idle and takes the big run off the shared queue first, but cannot hold it: it passes it to w2.
    big = stack.start_run(name="big", per_device_train_batch_size=16, max_seq_length=256, **(QUICK | {"max_steps": 3}))
    pinned_w1 = stack.start_run(name="pinned-w1", worker=f"w1@{HOST}", **QUICK)
    results = {name: stack.wait_run(run["id"]) for name, run in (("busy", busy), ("big", big), ("w1", pinned_w1))}
    assert all(run["status"] == "succeeded" for run in results.values()), results
    assert _trained_by(results["busy"], workers) == "w2"
    assert _trained_by(results["big"], workers) == "w2"
    assert _trained_by(results["w1"], workers) == "w1"
    assert results["big"]["started_at"] >= results["busy"]["finished_at"]  # it waited for w2, not on w1


def test_a_run_no_worker_can_hold_fails_with_what_each_offers(fleet: tuple[Stack, dict[str, Any]]) -> None:
    stack, _ = fleet
    huge = stack.start_run(name="huge", per_device_train_batch_size=1024, max_seq_length=8192, **QUICK)
    run = stack.wait_run(huge["id"], timeout=60)
    assert run["status"] == "failed"
    assert run["error"].startswith("no worker online can hold this run")
    assert f"w1@{HOST} offers 0.05 GiB" in run["error"] and f"w2@{HOST} offers 4.00 GiB" in run["error"]
