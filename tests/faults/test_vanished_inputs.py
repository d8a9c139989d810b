"""A queued run whose dataset or base model is deleted before a worker takes it ends `failed`, naming the
path, through the real worker (it used to stay `queued` for ever)."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack


def test_a_queued_run_whose_inputs_vanished_fails_naming_them(fault_stack: FaultStack, tmp_path: Path) -> None:
    stack = fault_stack
    dataset = tmp_path / "soon-gone.jsonl"
    shutil.copy(SAMPLE_DATASET_DIR / "train.jsonl", dataset)
    model = tmp_path / "soon-gone-model"
    shutil.copytree(TINY_MODEL_DIR, model)
    no_dataset = stack.create_run(dataset=str(dataset))
    no_model = stack.create_run(base_model=str(model))
    stack.enqueue(no_dataset)
    stack.enqueue(no_model)
    dataset.unlink()  # while the runs wait in the queue, before any worker is up
    shutil.rmtree(model)

    stack.start_worker()
    failed = stack.wait_status(no_dataset, ("failed", "succeeded", "running"), 120)
    assert failed.status == "failed" and f"dataset: no file at {dataset}" in (failed.error or ""), failed.error
    failed = stack.wait_status(no_model, ("failed", "succeeded", "running"), 120)
    assert failed.status == "failed" and str(model) in (failed.error or ""), failed.error
    # The failure is stored first, then announced live: the page's stream ends with it.
    wait_for(lambda: [event for event, _ in stack.events(no_dataset)][-2:] == ["status", "done"], 30, "the events")
