"""A GRPO run end to end on real parts: submitted to the API, trained by a real Celery worker process on the tiny
model, watched live. Its metric points carry each reward's mean, the completion lengths and the KL (0 at the first
step: the policy is its reference); every few steps the stream carries a handful of sampled completions with their
rewards, which the run folder keeps too; after training its held-out reward is stored beside the task figures."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.config import SAMPLE_DATASET_DIR
from tests.conftest import Stack
from tests.sse import open_stream

pytestmark = pytest.mark.slow

SPEC = {
    "name": "grpo journey",
    "objective": "grpo",
    "method": "lora",
    "quantization": "none",
    "max_steps": 6,
    "logging_steps": 1,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 16,
    "learning_rate": 5e-4,
    "beta": 0.04,
    "rewards": [{"function": "json_valid"}, {"function": "length", "min_tokens": 4, "max_tokens": 12, "weight": 2}],
    "eval_dataset": str(SAMPLE_DATASET_DIR / "eval.jsonl"),
    "task_eval_rows": 2,
    "eval_max_new_tokens": 16,
}


def test_a_grpo_run_streams_rewards_and_samples_and_stores_its_reward_evaluation(stack: Stack) -> None:
    client = stack.client()
    run = stack.start_run(**SPEC)
    events: list[tuple[str, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=stack.url, timeout=httpx.Timeout(5, read=120)) as reader,
        open_stream(reader, f"/api/v1/runs/{run['id']}/events", until=("done",)) as stream,
    ):
        events += [(name, data) for _, name, data in stream]
    run = stack.wait_run(run["id"])
    assert run["status"] == "succeeded", f"{run['error']}\n{stack.worker_log.read_text()[-3000:]}"

    # Live: each step's point carries the rewards, the lengths and the KL, which starts at 0.
    train = [data for name, data in events if name == "metric" and data["kind"] == "train"]
    assert [point["step"] for point in train] == [1, 2, 3, 4, 5, 6]
    first = train[0]["values"]
    assert {"rewards/json_valid/mean", "rewards/length/mean", "reward", "reward_std"} <= set(first)
    assert 0 < first["completions/mean_length"] <= 16 and first["kl"] == 0.0
    assert first["reward"] == pytest.approx(first["rewards/json_valid/mean"] + 2 * first["rewards/length/mean"])
    # The API's stored points are the streamed ones.
    stored = [m for m in client.get(f"/api/v1/runs/{run['id']}/metrics").json() if m["kind"] == "train"]
    assert [m["values"] for m in stored] == [m["values"] for m in train]

    # Sampled completions at the first step, then five steps on; the run folder keeps the same.
    samples = [data for name, data in events if name == "samples"]
    assert [sample["step"] for sample in samples] == [1, 6]
    for sample in samples:
        assert sample["prompt"].startswith("解析地址：") and 1 <= len(sample["completions"]) <= 4
        for completion in sample["completions"]:
            scores = completion["rewards"]
            assert completion["reward"] == pytest.approx(scores["json_valid"] + 2 * scores["length"])
    kept = (stack.data_dir / "runs" / run["id"] / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in kept] == samples

    # After training: the held-out reward of the base and of the adapter, and the task figures beside it.
    evaluation = run["evaluation"]
    for side in ("base", "adapter"):
        score = evaluation["reward"][side]
        assert score["rows"] == 2 and set(score["functions"]) == {"json_valid", "length"}
        assert 0.0 <= score["greedy"] <= 3.0 and 0.0 <= score["sampled"] <= 3.0
    assert evaluation["task"]["adapter"]["rows"] == 2
