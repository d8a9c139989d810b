"""The web process killed and started again mid-run: the run never notices, and the restarted web serves it."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.faults.conftest import FaultStack

pytestmark = pytest.mark.slow


def test_a_web_restart_mid_run_loses_nothing_and_interrupts_nothing(fault_stack: FaultStack) -> None:
    stack = fault_stack
    stack.start_all()
    run_id = stack.submit(name="through a web restart", max_steps=60, save_steps=10)

    wait_for(lambda: stack.logged_step(run_id) >= 5, 90, "step 5")
    stack.kill(stack.web)  # SIGKILL: no graceful shutdown to lean on
    killed_at = stack.logged_step(run_id)
    wait_for(lambda: stack.logged_step(run_id) >= killed_at + 5, 60, "training to go on without the web")
    stack.start_web()

    with stack.client() as client:
        during = client.get(f"/api/v1/runs/{run_id}").json()
        page = client.get(f"/runs/{run_id}")
        assert page.status_code == 200 and "through a web restart" in page.text
        final = stack.wait_status(run_id, ("succeeded", "failed"), 120)
        assert final.status == "succeeded", f"{final.error}\n{stack.worker_logs()}"
        served = client.get(f"/api/v1/runs/{run_id}").json()
        metrics = client.get(f"/api/v1/runs/{run_id}/metrics").json()

    assert during["status"] in ("running", "succeeded")
    assert (served["status"], served["attempts"], served["step"]) == ("succeeded", 0, 60)
    assert [point["step"] for point in metrics if point["kind"] == "train"] == list(range(1, 61))
    assert stack.starts(run_id) == 1  # trained in one go: the worker never stopped
