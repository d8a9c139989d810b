"""Checkpoints, resume after a killed worker, and early stopping keeping the best checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app import runs
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import RunStatus
from tests.worker.conftest import TRAIN, create_run, read_run, train_points
from worker.engine.train import run_training

REPO = Path(__file__).resolve().parents[2]

# The run in the subprocess stalls at step 12 (a step that never ends) and is killed there: by then
# checkpoint-10 is on disk and step 11's metric point is in the database, as after a real crash.
KILLED_WORKER = """
import sys, time
import worker.engine.callbacks as callbacks
callbacks.FLUSH_EVERY_S = 0.0
original = callbacks.MetricsCallback.on_step_end
def stall(self, args, state, control, **kwargs):
    original(self, args, state, control, **kwargs)
    if state.global_step >= 12:
        time.sleep(600)
callbacks.MetricsCallback.on_step_end = stall
from worker.engine.train import run_training
run_training(sys.argv[1])
"""


# This module's runs, unless a test says otherwise (on top of tests/worker/conftest.py's `run_spec`).
CHECKPOINTED = {
    "method": "lora",
    "precision": "fp32",
    "max_steps": 20,
    "save_steps": 10,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-3,
    "max_seq_length": 96,
}


def _kill_after_checkpoint(run_id: str, env: dict[str, str]) -> None:
    checkpoint = get_settings().runs_dir / run_id / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, run_id], cwd=REPO, env={**os.environ, **env}, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (checkpoint.is_file() and read_run(run_id).step > 10):
            assert process.poll() is None, (
                f"the worker exited early with {process.returncode}: {read_run(run_id).error}"
            )
            assert time.monotonic() < deadline, "no checkpoint-10 and step 11 within 120 s"
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(
    loradeck_env: dict[str, str],
) -> None:
    uninterrupted = create_run(CHECKPOINTED)
    run_training(uninterrupted)
    expected = train_points(uninterrupted)
    assert read_run(uninterrupted).status == RunStatus.succeeded

    run_id = create_run(CHECKPOINTED)
    _kill_after_checkpoint(run_id, loradeck_env)
    killed_at = read_run(run_id).step
    assert read_run(run_id).status == RunStatus.running and killed_at > 10  # what a lost worker leaves behind
    with get_sessionmaker()() as session:  # what the worker-loss check does; the run may be claimed again
        runs.get_run(session=session, run_id=run_id).status = RunStatus.interrupted
        session.commit()
    before = {point.step: point for point in train_points(run_id)}
    events: list[tuple[str, dict[str, Any]]] = []

    run_training(run_id, on_event=lambda event, data: events.append((event, data)))

    run = read_run(run_id)
    assert run.status == RunStatus.succeeded, run.error
    points = train_points(run_id)
    assert [point.step for point in points] == list(range(1, 21))
    assert ("log", {"lines": ["resumed from the checkpoint at step 10"], "step": 10}) in events
    # Time and tokens go on from the checkpoint instead of starting again at 0.
    assert points[10].time > before[10].time and points[10].tokens_seen > before[10].tokens_seen
    assert all(a.time < b.time and a.tokens_seen < b.tokens_seen for a, b in zip(points, points[1:], strict=False))
    # Same data order, dropout and optimizer state as if it had never stopped.
    assert points[-1].loss == pytest.approx(expected[-1].loss, rel=1e-3)
    assert [p.tokens_seen for p in points] == [p.tokens_seen for p in expected]
    print(f"final loss: resumed {points[-1].loss!r}, uninterrupted {expected[-1].loss!r}; killed at step {killed_at}")


def test_early_stopping_keeps_the_best_checkpoint(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    lines = TRAIN.read_text(encoding="utf-8").splitlines()
    dataset = tmp_path / "two-hundred.jsonl"
    dataset.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    # Held-out prompts, each with another row's answer: the JSON format they share makes the eval loss fall at
    # first, then the model learns to copy each address's own fields and the mismatched answers grow unlikely.
    rows = [json.loads(line) for line in lines[200:220]]
    mismatched = [
        {"prompt": a["prompt"], "completion": b["completion"]} for a, b in zip(rows, rows[1:] + rows[:1], strict=True)
    ]
    eval_file = tmp_path / "mismatched.jsonl"
    eval_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in mismatched), encoding="utf-8")
    run_id = create_run(
        CHECKPOINTED,
        dataset=str(dataset),
        max_steps=30,
        eval_dataset=str(eval_file),
        eval_steps=3,
        save_steps=3,
        early_stopping_patience=1,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
    )

    run_training(run_id)

    run = read_run(run_id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.step < 30, "training did not stop early"
    with get_sessionmaker()() as session:
        (adapter,) = runs.list_artifacts(session=session, run_id=run_id)
        evals = [p for p in runs.list_metrics(session=session, run_id=run_id) if p.kind == "eval"]
    best = min(evals, key=lambda point: point.loss)
    assert adapter.details["best_step"] == best.step < run.step == adapter.details["stopped_at_step"]
    assert adapter.details["best_eval_loss"] == pytest.approx(best.loss)
    assert evals[-1].loss > best.loss
    run_dir = get_settings().runs_dir / run_id
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    kept = load_file(run_dir / "checkpoints" / f"checkpoint-{best.step}" / "adapter_model.safetensors")
    assert saved.keys() == kept.keys()
    assert all(torch.equal(saved[name], kept[name]) for name in saved)
