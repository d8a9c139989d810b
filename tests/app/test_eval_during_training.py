"""Evaluation during training, through the real stack: a run with eval data and no eval_steps is evaluated a
handful of times over its steps, each eval point with its token accuracy beside its loss; eval_steps 0
evaluates once, at the end."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.config import SAMPLE_DATASET_DIR
from tests.conftest import QUICK_RUN, Stack

pytestmark = pytest.mark.slow

RUN = {"method": "lora", "quantization": "none", "learning_rate": 3e-3, "max_steps": 10}


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory: pytest.TempPathFactory) -> str:
    """16 rows of the sample's eval file: each evaluation stays short."""
    rows = (SAMPLE_DATASET_DIR / "eval.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    path = tmp_path_factory.mktemp("eval-data") / "eval.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def _trained(stack: Stack, spec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    response = httpx.post(stack.url + "/api/v1/runs", json=spec, timeout=30)
    assert response.status_code == 201, response.text
    run = stack.wait_run(response.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    metrics = httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/metrics", timeout=30).json()
    return run, metrics


def test_eval_data_without_eval_steps_is_evaluated_five_times_with_accuracy(stack: Stack, small_eval: str) -> None:
    spec = {k: v for k, v in (QUICK_RUN | RUN).items() if k != "eval_steps"} | {"eval_dataset": small_eval}
    run, metrics = _trained(stack, spec)
    assert run["spec"]["eval_steps"] == "auto"

    # Every max_steps / 5 steps: a curve over the run, the last point at its end.
    evals = [point for point in metrics if point["kind"] == "eval"]
    assert [point["step"] for point in evals] == [2, 4, 6, 8, 10]
    for point in evals:
        assert point["loss"] is not None and 0.0 <= point["token_accuracy"] <= 1.0
    # The run learns the task: its predictions of the eval answers get better as it trains.
    assert evals[-1]["token_accuracy"] > evals[0]["token_accuracy"]
    assert evals[-1]["loss"] < evals[0]["loss"]
    # Train points have no token accuracy of their own.
    assert {point["token_accuracy"] for point in metrics if point["kind"] == "train"} == {None}

    # The chart's thinned history keeps them, figures included.
    drawn = httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/metrics", params={"max_points": 10}, timeout=30).json()
    assert [p["token_accuracy"] for p in drawn if p["kind"] == "eval"][-1] == evals[-1]["token_accuracy"]


def test_eval_steps_0_evaluates_once_at_the_end(stack: Stack, small_eval: str) -> None:
    run, metrics = _trained(stack, QUICK_RUN | RUN | {"eval_dataset": small_eval, "eval_steps": 0, "max_steps": 4})
    assert run["spec"]["eval_steps"] == 0
    (only,) = [point for point in metrics if point["kind"] == "eval"]
    assert only["step"] == 4 and 0.0 <= only["token_accuracy"] <= 1.0


def test_an_explicit_eval_steps_wins(stack: Stack, small_eval: str) -> None:
    # Not a divisor of max_steps: Trainer evaluates at the last step too, and only once there.
    _, metrics = _trained(stack, QUICK_RUN | RUN | {"eval_dataset": small_eval, "eval_steps": 3, "max_steps": 7})
    assert [point["step"] for point in metrics if point["kind"] == "eval"] == [3, 6, 7]
