"""No run trains twice at once: a duplicated train message, and two workers racing for one run, end in
exactly one claim; a message for a run that trains under a live lease leaves it alone."""

from __future__ import annotations

import pytest

from app.cli import worker_command
from app.config import get_settings
from app.queue import VISIBILITY_TIMEOUT_S, celery_config
from tests.conftest import wait_for
from tests.faults.conftest import FaultStack


@pytest.mark.slow
def test_a_duplicated_train_message_trains_the_run_once(fault_stack: FaultStack) -> None:
    stack = fault_stack
    stack.start_worker()
    stack.wait_for_workers(1)
    run_id = stack.create_run(max_steps=30)

    stack.enqueue(run_id)
    stack.enqueue(run_id)  # as after a redelivery, or a client that retried

    final = stack.wait_status(run_id, ("succeeded", "failed"), 120)
    assert final.status == "succeeded", f"{final.error}\n{stack.worker_logs()}"
    wait_for(lambda: f"run {run_id} was not claimed" in stack.worker_logs(), 60, "the duplicate to be consumed")
    assert stack.starts(run_id) == 1
    assert stack.train_steps(run_id) == list(range(1, 31))


@pytest.mark.slow
def test_two_workers_racing_for_one_run_train_it_once(fault_stack: FaultStack) -> None:
    stack = fault_stack
    stack.start_worker()
    stack.start_worker()
    stack.wait_for_workers(2)
    run_id = stack.create_run(max_steps=100)

    # Two messages, two idle workers taking one each (prefetch 1): both try to claim the run at once.
    stack.enqueue(run_id)
    stack.enqueue(run_id)
    refused = f"run {run_id} was not claimed"
    wait_for(lambda: refused in stack.worker_logs(), 60, "the losing worker's claim")
    logs = [path.read_text() for path in sorted(stack.root.glob("worker-*.log"))]
    assert all("loradeck.train_run[" in log for log in logs), "each worker took one of the messages"

    # A third message while the run trains under a live lease: the idle worker takes it and steals nothing.
    wait_for(lambda: stack.logged_step(run_id) >= 5, 90, "step 5")
    stack.enqueue(run_id)
    wait_for(lambda: stack.worker_logs().count(refused) == 2, 30, "the third message's refusal")
    assert stack.run(run_id).status == "running"

    final = stack.wait_status(run_id, ("succeeded", "failed"), 120)
    assert final.status == "succeeded", f"{final.error}\n{stack.worker_logs()}"
    assert stack.starts(run_id) == 1 and final.attempts == 0
    assert stack.train_steps(run_id) == list(range(1, 101))


def test_the_queue_hands_a_training_worker_one_task_at_a_time() -> None:
    config = celery_config(get_settings())
    assert config["worker_prefetch_multiplier"] == 1 and config["task_acks_late"] is True
    # Redis hands an unacknowledged task to another worker after this long: it must outlast any run.
    assert config["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT_S >= 7 * 24 * 3600
    command = worker_command()
    assert command[command.index("--pool") + 1] == "solo"  # one task per GPU process, in the main thread

    from worker.runtime.celery_app import app

    assert app.conf.broker_connection_max_retries is None  # reconnects to Redis for as long as it takes
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
