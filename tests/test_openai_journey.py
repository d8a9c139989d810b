"""A script written for OpenAI's fine-tuning API, pointed at loradeck by its `base_url` and otherwise unchanged
(the official `openai` SDK), on real parts: the bundled sample uploaded as chat files, a job with `auto`
hyperparameters trained by a real Celery worker on the tiny model, polled to `succeeded`, its events and
checkpoints read, its `ft:` model listed and asked held-out addresses through the generate worker. The fine-tune
gets most of them exactly right; the base gets none. The job is a loradeck run like any other."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from app.config import SAMPLE_DATASET_DIR
from tests.conftest import Stack
from tests.openai_sdk import SYSTEM, chat_rows, client, jsonl

pytestmark = [pytest.mark.slow, pytest.mark.learns]

TRAIN = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "train.jsonl").read_text().splitlines()]
EVAL = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "eval.jsonl").read_text().splitlines()]
VALIDATION, HELD_OUT = EVAL[:40], EVAL[100:130]  # the held-out rows are in neither file
FINAL = ("succeeded", "failed", "cancelled")


def poll(sdk: OpenAI, job_id: str, timeout: float = 900) -> Any:
    """Poll as an OpenAI script does, until the job ends."""
    deadline = time.monotonic() + timeout
    job = sdk.fine_tuning.jobs.retrieve(job_id)
    while job.status not in FINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout} s"
        time.sleep(2)
        job = sdk.fine_tuning.jobs.retrieve(job_id)
    return job


def answer(sdk: OpenAI, model: str, prompt: str) -> str:
    response = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=120,
    )
    return response.choices[0].message.content or ""


def test_an_openai_fine_tuning_script_trains_and_answers_through_loradeck(stack: Stack) -> None:
    sdk = client(stack.url)
    train = sdk.files.create(file=("train.jsonl", jsonl(chat_rows(TRAIN))), purpose="fine-tune")
    validation = sdk.files.create(file=("validation.jsonl", jsonl(chat_rows(VALIDATION))), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train.id,
        validation_file=validation.id,
        suffix="addresses",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}},
    )
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued", "running")
    assert (job.model, job.training_file, job.validation_file, job.seed) == (
        "tiny-llama", train.id, validation.id, 7
    )  # fmt: skip
    run_id = job.id.removeprefix("ftjob-")
    # The job is a loradeck run: the dashboard lists it.
    assert run_id in [run["id"] for run in httpx.get(stack.url + "/api/v1/runs", timeout=30).json()]

    job = poll(sdk, job.id)
    assert job.status == "succeeded", f"{job.error}\n{stack.worker_log.read_text()[-3000:]}"
    chosen = job.method.supervised.hyperparameters  # "auto" is reported as the values it chose
    assert all(isinstance(value, int | float) for value in (chosen.n_epochs, chosen.batch_size))
    assert isinstance(chosen.learning_rate_multiplier, int | float)
    assert job.fine_tuned_model == f"ft:tiny-llama:addresses:{run_id}"
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at and job.error is None

    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=50))
    losses = [event.data for event in events if event.type == "metrics"]
    assert losses and all("train_loss" in data and data["step"] > 0 for data in losses)
    by_step = sorted(losses, key=lambda data: data["step"])
    assert by_step[-1]["train_loss"] < by_step[0]["train_loss"]
    assert any(event.type == "message" and event.level == "info" for event in events)

    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints, "a finished job keeps its checkpoints"
    for checkpoint in checkpoints:
        expected = f"ft:tiny-llama:addresses:{run_id}:ckpt-step-{checkpoint.step_number}"
        assert checkpoint.fine_tuned_model_checkpoint == expected and checkpoint.fine_tuning_job_id == job.id
    assert answer(sdk, checkpoints[0].fine_tuned_model_checkpoint, HELD_OUT[0]["prompt"])  # usable as a model

    models = [model.id for model in sdk.models.list()]
    assert "tiny-llama" in models and job.fine_tuned_model in models

    # Held-out addresses, greedy: the fine-tune gets most exactly right, the base none.
    tuned = sum(answer(sdk, job.fine_tuned_model, row["prompt"]) == row["completion"] for row in HELD_OUT)
    base = sum(answer(sdk, "tiny-llama", row["prompt"]) == row["completion"] for row in HELD_OUT)
    assert base == 0 and tuned >= 0.6 * len(HELD_OUT), f"fine-tune {tuned}/{len(HELD_OUT)}, base {base}"

    # Streamed and whole answers at temperature 0 are the same text.
    whole = answer(sdk, job.fine_tuned_model, HELD_OUT[1]["prompt"])
    stream = sdk.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": HELD_OUT[1]["prompt"]}],
        temperature=0,
        max_tokens=120,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-0123456789ab")
