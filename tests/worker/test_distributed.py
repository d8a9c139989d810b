"""Multi-GPU runs (gpus > 1): accelerate launch across two processes, here on the CPU over gloo."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from app import runs
from app.config import TINY_MODEL_DIR, get_settings
from app.db import get_sessionmaker
from app.models import RunStatus
from app.rundir import RunDir
from app.schemas import RunSpec
from app.services import runs as runs_service
from tests.worker.conftest import (
    TRAIN,
    adapter_logit_change,
    create_run,
    read_events,
    read_run,
    train_in_thread,
    wait_for_step,
)
from worker.engine.distributed import launch_command
from worker.engine.train import run_training
from worker.runtime.lease import HANDED_BACK, WORKER_STOPPING

REPO = Path(__file__).resolve().parents[2]


# This module's runs, unless a test says otherwise (on top of tests/worker/conftest.py's `run_spec`).
TWO_PROCESSES = {
    "method": "lora",
    "precision": "fp32",
    "gpus": 2,
    "max_steps": 6,
    "save_steps": 0,
    "per_device_train_batch_size": 2,
    "learning_rate": 2e-3,
    "max_seq_length": 64,
    "task_eval_rows": 0,
}


def _ranks(run_id: str) -> list[psutil.Process]:
    """The live rank processes of the run (their command line names it; the launcher's too, so it is left out)."""
    found = []
    for process in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = process.info["cmdline"] or []
        if "worker.engine.distributed" in cmdline and run_id in cmdline and "accelerate.commands.launch" not in cmdline:
            found.append(process)
    # A rank may fork helpers of its own (torch elastic's "pt_elastic"); they carry its command line.
    pids = {process.pid for process in found}
    return [process for process in found if process.info["ppid"] not in pids]


def test_the_launch_command_asks_accelerate_for_one_process_per_gpu(loradeck_env: dict[str, str]) -> None:
    spec = RunSpec(base_model=str(TINY_MODEL_DIR), dataset=str(TRAIN), method="lora", gpus=4)
    command = launch_command(spec, run_id="r1", worker="box:7", checkpoint=Path("/data/runs/r1/checkpoint-10"))
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert "--num_processes=4" in command and "--num_machines=1" in command
    assert command[-5:] == [
        "-m",
        "worker.engine.distributed",
        "r1",
        "--worker=box:7",
        "--resume-from=/data/runs/r1/checkpoint-10",
    ]


@pytest.mark.slow
def test_a_two_process_qlora_run_reports_from_one_rank_and_saves_one_adapter(loradeck_env: dict[str, str]) -> None:
    # QLoRA, the harder case (4-bit layers on every rank); the module's other runs are LoRA.
    run_id = create_run(TWO_PROCESSES, method="qlora")

    started = time.monotonic()
    run_training(run_id)
    print(f"two-process run of 6 steps: {time.monotonic() - started:.1f} s")

    run = read_run(run_id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.step == 6 and run.params_trainable and run.params_all
    with get_sessionmaker()() as session:
        points = runs.list_metrics(session=session, run_id=run_id)
        artifacts = runs.list_artifacts(session=session, run_id=run_id)
    assert [(point.kind, point.step) for point in points] == [("train", step) for step in range(1, 7)]
    assert all(point.loss is not None and point.tokens_seen for point in points)
    # Both ranks' tokens count: the logged step saw two per-device batches.
    kinds = [kind for kind, _ in read_events(run_id)]
    assert kinds.count("metric") == 6 and kinds.count("params") == 1 and kinds.count("artifact") == 1
    assert kinds[0] == "status" and kinds[-2:] == ["status", "done"]
    assert dict(read_events(run_id))["done"] == {"status": "succeeded"}

    (adapter,) = artifacts
    run_dir = get_settings().runs_dir / run_id
    log = (run_dir / "train.log").read_text()
    assert "launching 2 training processes" in log and "succeeded" in log
    assert log.count("step 6 train loss") == 1
    assert adapter_logit_change(get_settings().runs_dir / adapter.path) > 1e-4
    assert _ranks(run_id) == []


@pytest.mark.slow
def test_cancel_stops_every_rank_of_a_two_process_run(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(TWO_PROCESSES, max_steps=10_000)
    worker = train_in_thread(run_id, until_step=2, timeout=180)
    assert len(_ranks(run_id)) == 2

    with get_sessionmaker()() as session:
        runs_service.cancel_run(session=session, run_id=run_id)
    worker.join(timeout=90)

    run = read_run(run_id)
    assert not worker.is_alive()
    assert run.status == RunStatus.cancelled and run.step < 10_000, run.error
    assert dict(read_events(run_id))["done"] == {"status": "cancelled"}
    assert _ranks(run_id) == []
    with get_sessionmaker()() as session:
        assert runs.list_artifacts(session=session, run_id=run_id) == []


@pytest.mark.slow
def test_a_two_process_run_handed_back_on_shutdown_resumes_from_its_checkpoint(loradeck_env: dict[str, str]) -> None:
    # No checkpoint of its own before max_steps: only the hand-back one. Steps enough to outlast the hand-back.
    run_id = create_run(TWO_PROCESSES, max_steps=60, save_steps=100)
    worker = train_in_thread(run_id, until_step=2, timeout=180)
    try:
        WORKER_STOPPING.set()  # what a warm shutdown of the Celery worker does
        worker.join(timeout=90)
    finally:
        WORKER_STOPPING.clear()
    assert not worker.is_alive()
    run = read_run(run_id)
    assert run.status == RunStatus.interrupted and run.error == HANDED_BACK
    stopped_at = RunDir.of(run_id).resume_step()
    assert 2 <= stopped_at < 60 and _ranks(run_id) == []

    run_training(run_id)

    run = read_run(run_id)
    assert run.status == RunStatus.succeeded, run.error
    with get_sessionmaker()() as session:
        points = runs.list_metrics(session=session, run_id=run_id)
    assert [point.step for point in points] == list(range(1, 61))
    resumed = ("log", {"lines": [f"resumed from the checkpoint at step {stopped_at}"], "step": stopped_at})
    assert resumed in read_events(run_id)


@pytest.mark.slow
def test_killing_the_worker_leaves_no_training_process(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(TWO_PROCESSES, max_steps=10_000)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from worker.engine.train import run_training; run_training(sys.argv[1])",
            run_id,
        ],  # fmt: skip
        cwd=REPO,
        env={**os.environ, **loradeck_env},
    )
    try:
        wait_for_step(run_id, 1, alive=lambda: worker.poll() is None, timeout=180)
        assert len(_ranks(run_id)) == 2
    finally:
        worker.kill()  # SIGKILL: no cleanup of its own runs
        worker.wait(timeout=30)
    deadline = time.monotonic() + 60
    while _ranks(run_id):
        assert time.monotonic() < deadline, "training processes outlived their worker"
        time.sleep(0.5)
