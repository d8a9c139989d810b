"""Failures explained, and the lease: each failure ends the run `failed` with a reason that names what to
change, and a `log` event with the lines around it; a lost worker's run is taken back by a reaper."""

from __future__ import annotations

import errno
import re
import shutil
import threading
import time
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import update
from transformers import Trainer

from app import runs
from app.config import TINY_MODEL_DIR, get_settings
from app.db import get_sessionmaker
from app.models import Run, RunStatus
from app.schemas import RunSpec
from app.services import runs as runs_service
from tests.worker.conftest import TRAIN, create_run, read_events, read_run, train_in_thread, train_points
from worker.engine.train import run_training
from worker.runtime.lease import Lease
from worker.runtime.reaper import MAX_ATTEMPTS, REQUEUE_AFTER_LEASES, Reaper

# This module's runs, unless a test says otherwise (on top of tests/worker/conftest.py's `run_spec`).
QUICK = {
    "method": "lora",
    "precision": "fp32",
    "max_steps": 30,
    "save_steps": 0,
    "per_device_train_batch_size": 2,
    "max_seq_length": 64,
}


def _assert_failed_and_explained(run_id: str, *, starts_with: str) -> Any:
    run = read_run(run_id)
    assert run.status == RunStatus.failed, run.error
    assert run.error is not None and run.error.startswith(starts_with), run.error
    events = read_events(run_id)
    kinds = [kind for kind, _ in events]
    assert kinds[-3:] == ["log", "status", "done"]
    assert events[-2][1] == {"status": "failed", "error": run.error}
    lines = events[-3][1]["lines"]
    assert any(run.error in line for line in lines), lines  # the reason, with the lines that led to it
    return run


# --- failures explained ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_loss_that_becomes_nan_stops_the_run_at_that_step(loradeck_env: dict[str, str]) -> None:
    # A learning rate this high makes the tiny model's gradients overflow within a dozen steps.
    run_id = create_run(QUICK, learning_rate=1.0, lr_scheduler_type="constant")

    run_training(run_id)

    run = _assert_failed_and_explained(run_id, starts_with="")
    found = re.match(
        r"(loss|the gradient norm) became (NaN|infinite) at step (\d+), so training stopped there", run.error
    )
    assert found, run.error
    assert "lower learning_rate (now 1.0)" in run.error and "warmup_ratio" in run.error
    step = int(found.group(3))
    assert 1 < step < 30
    steps = [point.step for point in train_points(run_id)]
    assert steps == list(range(1, step + 1))  # nothing trained past the step where it diverged
    assert run.step == step
    assert any(f"step {step} train" in line for line in read_events(run_id)[-3][1]["lines"])


def test_a_full_disk_while_saving_a_checkpoint_names_the_directory(
    loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: Trainer, model: Any, trial: Any = None) -> None:
        path = Path(str(self.args.output_dir)) / f"checkpoint-{self.state.global_step}"
        path.mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(path / "optimizer.pt"))

    monkeypatch.setattr(Trainer, "_save_checkpoint", disk_full)
    run_id = create_run(QUICK, max_steps=6, save_steps=3)

    run_training(run_id)

    checkpoint = get_settings().runs_dir / run_id / "checkpoints" / "checkpoint-3"
    run = _assert_failed_and_explained(run_id, starts_with=f"the disk holding {checkpoint} is full")
    assert run.error.endswith("free space or point LORADECK_DATA_DIR elsewhere")
    assert run.step == 3


def test_out_of_memory_says_what_to_try(loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    original = Trainer.training_step

    def oom_at_step_3(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == 2:  # the third step: CUDA's allocator gives up there
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", oom_at_step_3)
    run_id = create_run(QUICK)

    run_training(run_id)

    run = _assert_failed_and_explained(run_id, starts_with="out of GPU memory: ")
    for tip in ("micro_batch_size to fewer", "max_seq_length (now 64)", "gradient_checkpointing", "qlora"):
        assert tip in run.error
    assert [point.step for point in train_points(run_id)] == [1, 2]


def test_a_deleted_base_model_directory_is_named(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    shutil.copytree(TINY_MODEL_DIR, model)
    run_id = create_run(QUICK, base_model=str(model))
    shutil.rmtree(model)  # between queueing and training

    run_training(run_id)

    _assert_failed_and_explained(run_id, starts_with=f"base_model: {model} not found: the directory is gone")


def test_a_dataset_deleted_after_queueing_is_named(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    dataset = tmp_path / "rows.jsonl"
    shutil.copy(TRAIN, dataset)
    run_id = create_run(QUICK, dataset=str(dataset))
    dataset.unlink()

    run_training(run_id)

    _assert_failed_and_explained(run_id, starts_with=f"dataset: no file at {dataset}")


# --- the lease and the reaper ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _claim(run_id: str, worker: str = "gone-box:4242") -> None:
    with get_sessionmaker()() as session:
        assert runs.claim_run(session=session, run_id=run_id, worker=worker)


def _checkpoint(run_id: str, step: int) -> None:
    path = get_settings().runs_dir / run_id / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")


def test_a_run_whose_lease_expires_is_interrupted_and_enqueued_once(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QUICK)
    _claim(run_id)
    _checkpoint(run_id, 10)
    (get_settings().runs_dir / run_id / "checkpoints" / "checkpoint-15").mkdir()  # cut off mid-save
    clock, sent = FakeClock(), list[str]()
    first, second = (Reaper(lease_timeout_s=30, enqueue=sent.append, clock=clock) for _ in range(2))

    assert first.reap() == [] and second.reap() == []
    clock.now += 29
    assert first.reap() == []  # not yet expired
    with get_sessionmaker()() as session:  # the worker is alive after all: a renewal restarts the count
        assert runs.renew_lease(session=session, run_id=run_id, worker="gone-box:4242")
    clock.now += 2
    assert first.reap() == [] and second.reap() == []
    clock.now += 30
    assert first.reap() == [(run_id, RunStatus.interrupted)]
    assert second.reap() == []  # what it saw is gone: its conditional UPDATE changed nothing

    run = read_run(run_id)
    assert (run.status, run.attempts) == (RunStatus.interrupted, 1)
    assert run.error == "the worker running it was lost; resuming from step 10"
    assert sent == [run_id]
    assert read_events(run_id)[-1] == ("status", {"status": "interrupted", "error": run.error})
    _claim(run_id, worker="live-box:1")
    assert read_run(run_id).error is None  # resumed: the reason it was interrupted is history


def test_a_run_that_keeps_losing_its_worker_fails_with_a_reason(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QUICK)
    clock, sent = FakeClock(), list[str]()
    reaper = Reaper(lease_timeout_s=30, enqueue=sent.append, clock=clock)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        _claim(run_id, worker=f"box:{attempt}")
        reaper.reap()
        clock.now += 31
        reaper.reap()
        assert read_run(run_id).attempts == attempt

    run = read_run(run_id)
    assert run.status == RunStatus.failed and run.finished_at is not None
    assert run.error is not None and run.error.startswith(f"the worker running it was lost {MAX_ATTEMPTS} times")
    assert len(sent) == MAX_ATTEMPTS - 1
    assert read_events(run_id)[-1] == ("done", {"status": "failed"})


def test_an_interrupted_run_is_enqueued_again_only_when_a_reaper_interrupted_it(
    loradeck_env: dict[str, str],
) -> None:
    reaped, stopped, cancelled = create_run(QUICK), create_run(QUICK), create_run(QUICK)
    with get_sessionmaker()() as session:
        for run_id, attempts in ((reaped, 1), (stopped, 0), (cancelled, 1)):
            session.execute(update(Run).where(Run.id == run_id).values(status="interrupted", attempts=attempts))
        session.commit()
        runs.request_cancel(session=session, run_id=cancelled)
    clock, sent = FakeClock(), list[str]()
    reaper = Reaper(lease_timeout_s=30, enqueue=sent.append, clock=clock)

    assert reaper.reap() == [(cancelled, RunStatus.cancelled)]  # nobody trains it: cancelled at once
    clock.now += 30 * REQUEUE_AFTER_LEASES
    assert reaper.reap() == [(reaped, RunStatus.interrupted)]
    assert sent == [reaped]  # the one stopped with Ctrl-C in the CLI waits for `loradeck train --resume`
    assert read_run(cancelled).status == RunStatus.cancelled and read_run(stopped).status == RunStatus.interrupted


def test_a_renewed_lease_is_never_reaped_and_a_lost_one_stops_training(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QUICK, max_steps=10_000)
    _claim(run_id, worker="here:1")
    with Lease(run_id=run_id, worker="here:1", sessions=get_sessionmaker(), every_s=0.05) as lease:
        reaper, deadline = Reaper(lease_timeout_s=0.3, enqueue=lambda _: None), time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert reaper.reap() == []
            time.sleep(0.05)
        assert not lease.lost
    with get_sessionmaker()() as session:  # what a reaper does to a lost worker's run
        session.execute(update(Run).where(Run.id == run_id).values(status="queued", worker=None))
        session.commit()

    # A worker frozen past its lease wakes up to find the run taken: it stops at the next step and leaves
    # the run to its new owner, so the run never trains in two places at once.
    worker = train_in_thread(run_id, until_step=2)
    with get_sessionmaker()() as session:
        session.execute(update(Run).where(Run.id == run_id).values(status="interrupted", worker="new-owner:7"))
        session.commit()
    worker.join(timeout=60)

    assert not worker.is_alive()
    run = read_run(run_id)
    assert (run.status, run.worker, run.finished_at) == (RunStatus.interrupted, "new-owner:7", None)
    assert "done" not in [kind for kind, _ in read_events(run_id)]


def test_claims_racing_for_one_run_let_exactly_one_win(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QUICK)
    start, results = threading.Barrier(8), []

    def claim(worker: str) -> None:
        start.wait()
        with get_sessionmaker()() as session:
            results.append(runs.claim_run(session=session, run_id=run_id, worker=worker))

    threads = [threading.Thread(target=claim, args=(f"box:{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert isinstance(read_run(run_id).heartbeat_at, datetime)


def test_a_cancelled_run_lets_go_of_its_model(loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's memory goes back when a run ends: nothing keeps the adapted model alive (on a GPU,
    torch.cuda.empty_cache then returns its memory to the device)."""
    import worker.engine.steps as steps

    models: list[weakref.ref[Any]] = []
    apply_adapter = steps.apply_adapter

    def remember(model: Any, spec: RunSpec) -> Any:
        adapted = apply_adapter(model, spec)
        models.append(weakref.ref(adapted))
        return adapted

    monkeypatch.setattr(steps, "apply_adapter", remember)
    run_id = create_run(QUICK, max_steps=10_000)
    worker = train_in_thread(run_id, until_step=2)
    with get_sessionmaker()() as session:
        runs_service.cancel_run(session=session, run_id=run_id)
    worker.join(timeout=60)

    assert read_run(run_id).status == RunStatus.cancelled
    assert models and models[0]() is None


def test_a_merge_or_export_whose_worker_went_away_fails_so_it_can_be_asked_again(
    loradeck_env: dict[str, str],
) -> None:
    """An artifact claimed by a worker whose heartbeat is gone (or that started again since) would stay running
    for ever; a live worker's, or one made in-process (no worker to watch), is left alone."""
    from app.models import Artifact, ArtifactKind, ArtifactStatus
    from worker.runtime.registry import Heartbeat

    run_id = create_run(QUICK)
    alive = Heartbeat("merger@here", ["merge"])
    alive.beat()
    made_by = {
        "lost": {"worker": "merger@gone", "started": 1.0},
        "restarted": {"worker": "merger@here", "started": alive.record.started - 60},
        "live": {"worker": "merger@here", "started": alive.record.started},
        "in-process": None,
    }
    ids = {}
    with get_sessionmaker()() as session:
        for label, holder in made_by.items():
            details = {"type": "q8_0"} | ({"made_by": holder} if holder else {})
            artifact = Artifact(run_id=run_id, kind=ArtifactKind.gguf, status=ArtifactStatus.running, details=details)
            session.add(artifact)
            session.commit()
            ids[label] = artifact.id
    try:
        Reaper(lease_timeout_s=30, enqueue=list[str]().append, clock=FakeClock()).reap()
    finally:
        alive.stop()
    with get_sessionmaker()() as session:
        statuses = {label: session.get(Artifact, artifact_id) for label, artifact_id in ids.items()}
        ended = {label: (a.status, a.error) for label, a in statuses.items() if a is not None}
    assert ended["lost"][0] == ended["restarted"][0] == "failed"
    assert ended["lost"][1] == "the worker making it (merger@gone) stopped; ask for it again"
    assert ended["live"] == ("running", None) and ended["in-process"] == ("running", None)
    failed = [data for event, data in read_events(run_id) if event == "artifact" and data["status"] == "failed"]
    assert {data["id"] for data in failed} == {ids["lost"], ids["restarted"]}
