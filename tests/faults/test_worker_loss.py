"""A worker process SIGKILLed mid-run: its lease expires, a reaper on the other worker interrupts the run
and enqueues it again, and the run resumes from its last checkpoint and succeeds."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.conftest import wait_for
from tests.faults.conftest import LEASE_TIMEOUT_S, FaultStack

pytestmark = pytest.mark.slow


def test_a_sigkilled_worker_s_run_is_interrupted_then_resumed_by_another_worker(fault_stack: FaultStack) -> None:
    stack = fault_stack
    stack.start_worker()
    stack.start_worker()
    stack.wait_for_workers(2)
    run_id = stack.create_run(max_steps=60, save_steps=10)
    stack.enqueue(run_id)

    # Past the checkpoint of step 10 by a few steps (train.log is written as each step ends): then the kill -9.
    wait_for(lambda: stack.logged_step(run_id) >= 13, 90, "step 13")
    owner = stack.run(run_id).worker
    assert owner is not None
    os.kill(int(owner.rsplit(":", 1)[1]), signal.SIGKILL)
    killed_at, killed_step = time.monotonic(), stack.logged_step(run_id)

    # The other worker claims it again within moments, so the lasting sign of the reaper is the attempt count.
    wait_for(lambda: stack.run(run_id).attempts == 1, 60, "the reaper to interrupt the run")
    noticed = time.monotonic() - killed_at
    assert noticed < 60
    reaped = wait_for(  # published just after the database write
        lambda: next((data for _, data in stack.events(run_id) if data.get("status") == "interrupted"), None),
        10,
        "the interrupted event",
    )
    found = re.fullmatch(r"the worker running it was lost; resuming from step (\d+)", reaped["error"])
    assert found, reaped
    resumed_from = int(found[1])
    assert resumed_from == 10 < killed_step  # steps past the checkpoint were lost, and are trained again

    final = stack.wait_status(run_id, ("succeeded", "failed"), 120)
    assert final.status == "succeeded", f"{final.error}\n{stack.worker_logs()}"
    assert final.attempts == 1 and final.worker != owner
    assert stack.train_steps(run_id) == list(range(1, 61))  # the lost steps trained again, none twice
    assert stack.starts(run_id) == 2
    resumed = {"lines": [f"resumed from the checkpoint at step {resumed_from}"], "step": resumed_from}
    assert resumed in [data for event, data in stack.events(run_id) if event == "log"]
    print(
        f"killed at step {killed_step}; interrupted {noticed:.1f} s later (lease {LEASE_TIMEOUT_S} s); "
        f"resumed from step {resumed_from}"
    )


def test_a_worker_stopped_mid_run_hands_the_run_back_without_losing_an_attempt(fault_stack: FaultStack) -> None:
    """What `loradeck up` does on Ctrl-C, or a deploy: SIGTERM. The worker does not train on to the run's end
    (which may be days away) nor gets killed: it saves a checkpoint at the next step and requeues the run."""
    stack = fault_stack
    first = stack.start_worker()
    stack.wait_for_workers(1)
    run_id = stack.create_run(max_steps=60, save_steps=25)
    stack.enqueue(run_id)
    wait_for(lambda: stack.logged_step(run_id) >= 8, 90, "step 8")

    stopping = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    stopped_in = time.monotonic() - stopping
    run = stack.run(run_id)
    assert (run.status, run.attempts) == ("interrupted", 0), run.error
    stopped_at = run.step
    assert 8 <= stopped_at < 25  # a checkpoint of its own at the step it stopped, not the last scheduled one
    checkpoint = stack.root / "data" / "runs" / run_id / "checkpoints" / f"checkpoint-{stopped_at}"
    assert (checkpoint / "trainer_state.json").is_file()

    stack.start_worker()  # as `loradeck up` does on its next start: the run's message is waiting
    final = stack.wait_status(run_id, ("succeeded", "failed"), 120)
    assert final.status == "succeeded", f"{final.error}\n{stack.worker_logs()}"
    assert final.attempts == 0
    assert stack.train_steps(run_id) == list(range(1, 61))
    resumed = {"lines": [f"resumed from the checkpoint at step {stopped_at}"], "step": stopped_at}
    assert resumed in [data for event, data in stack.events(run_id) if event == "log"]
    print(f"SIGTERM at step {stopped_at}: the worker exited {stopped_in:.1f} s later; resumed from there")
