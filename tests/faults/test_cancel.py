"""Cancel from the web mid-run: training stops within one optimizer step, the run is `cancelled`, and its
last checkpoint stays on disk."""

from __future__ import annotations

import time

import pytest

from app.config import get_settings
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack

pytestmark = pytest.mark.slow


def test_cancel_stops_training_within_one_step_and_keeps_the_checkpoint(fault_stack: FaultStack) -> None:
    stack = fault_stack
    stack.start_all()
    run_id = stack.submit(name="cancel me", max_steps=5000, save_steps=5)
    with stack.client() as client:
        wait_for(lambda: stack.logged_step(run_id) >= 8, 90, "step 8")

        # The step the user sees when they click: train.log has a line as each step ends.
        seen = stack.logged_step(run_id)
        started = time.monotonic()
        assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 200
        final = stack.wait_status(run_id, ("cancelled", "failed", "succeeded"), 30)
        took = time.monotonic() - started

    assert final.status == "cancelled", final.error
    last = stack.train_steps(run_id)[-1]
    # Step seen+1 was in progress at the click and ends; its cancel check may have run just before the
    # click, so seen+2 at the most. A check every 0.5 s would overshoot by several of these ~50 ms steps.
    assert seen < last <= seen + 2, (seen, last)
    assert final.step == last
    checkpoint = get_settings().runs_dir / run_id / "checkpoints" / "checkpoint-5"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert stack.events(run_id)[-1] == ("done", {"status": "cancelled"})
    print(f"cancel at step {seen}: stopped after step {last}, cancelled {took:.2f} s after the click")
