"""OpenAI's fine-tuning jobs under /v1, driven by the official `openai` SDK, unchanged, against the whole stack
(uvicorn, a trainer and an inspect worker): jobs on the bundled sample in chat form train a few steps of the
tiny model to `succeeded` with `auto` and with explicit hyperparameters, report the numbers they trained with,
list their events and checkpoints; a running job pauses, resumes under the same id and is cancelled; a run
started in the dashboard is listed as a job; bad requests are refused naming the parameter."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

from app.config import SAMPLE_DATASET_DIR
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.slow  # trains jobs of the tiny model

ROWS = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "train.jsonl").read_text().splitlines()[:24]]
HELD_OUT = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "eval.jsonl").read_text().splitlines()[:8]]
ENDED = ("succeeded", "failed", "cancelled")


def chat_file(rows: list[dict[str, str]]) -> bytes:
    """The sample's prompt/completion rows as an OpenAI chat fine-tuning file."""
    lines = [
        {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]}
        for row in rows
    ]
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.url + "/v1", api_key="sk-anything", max_retries=0)


@pytest.fixture(scope="module")
def files(sdk: OpenAI) -> dict[str, str]:
    train = sdk.files.create(file=("train.jsonl", chat_file(ROWS)), purpose="fine-tune")
    valid = sdk.files.create(file=("valid.jsonl", chat_file(HELD_OUT)), purpose="fine-tune")
    plain = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS[:8]).encode()
    prompt_completion = sdk.files.create(file=("plain.jsonl", plain), purpose="fine-tune")
    return {"train": train.id, "valid": valid.id, "plain": prompt_completion.id}


def wait_job(sdk: OpenAI, job_id: str, until: tuple[str, ...] = ENDED, timeout: float = 240) -> FineTuningJob:
    def reached() -> FineTuningJob | None:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in until else None

    return wait_for(reached, timeout, f"job {job_id} to be {' or '.join(until)}", every=0.3)


def run_of(stack: Stack, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{stack.url}/api/v1/runs/{job_id.removeprefix('ftjob-')}", timeout=30).json())


def test_jobs_train_to_succeeded_with_auto_and_explicit_hyperparameters(
    sdk: OpenAI, stack: Stack, files: dict[str, str]
) -> None:
    auto = sdk.fine_tuning.jobs.create(
        model="tiny-llama", training_file=files["train"], validation_file=files["valid"], suffix="addr",
        metadata={"team": "search"},
    )  # fmt: skip
    explicit = sdk.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=files["train"],
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}}},
    )  # fmt: skip

    assert auto.id.startswith("ftjob-") and auto.object == "fine_tuning.job" and auto.status == "queued"
    assert (auto.model, auto.training_file, auto.validation_file) == ("tiny-llama", files["train"], files["valid"])
    assert (auto.user_provided_suffix, auto.metadata, auto.organization_id) == ("addr", {"team": "search"}, "loradeck")
    assert auto.fine_tuned_model is None and auto.finished_at is None
    # "auto" is reported as the numbers chosen: the bundled model's shipped recipe.
    recipe = json.loads((SAMPLE_DATASET_DIR.parent.parent / "tiny-llama" / "recipe.json").read_text())["sft"]
    chosen = auto.hyperparameters.model_dump()
    assert chosen == {"batch_size": recipe["batch_size"], "n_epochs": recipe["n_epochs"], "learning_rate_multiplier": 1}
    assert auto.method is not None and auto.method.supervised is not None
    assert auto.method.supervised.hyperparameters.model_dump() == chosen
    auto_spec = run_of(stack, auto.id)["spec"]  # the rest of the recipe: the LoRA it trains
    assert {name: auto_spec[name] for name in ("method", "r", "learning_rate", "per_device_train_batch_size")} == {
        "method": recipe["method"], "r": recipe["r"], "learning_rate": recipe["learning_rate"],
        "per_device_train_batch_size": recipe["batch_size"],
    }  # fmt: skip

    asked = {"batch_size": 8, "learning_rate_multiplier": 0.5, "n_epochs": 2}
    assert explicit.hyperparameters.model_dump() == asked and explicit.seed == 7
    spec = run_of(stack, explicit.id)["spec"]  # the run the dashboard shows trains with those numbers
    assert (spec["per_device_train_batch_size"], spec["max_steps"], spec["seed"]) == (8, 6, 7)
    assert spec["learning_rate"] == pytest.approx(0.5 * recipe["learning_rate"])

    done = wait_job(sdk, explicit.id)
    assert done.status == "succeeded", done.error
    run_id = explicit.id.removeprefix("ftjob-")
    assert done.fine_tuned_model == f"ft:tiny-llama:loradeck:{run_id}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at and done.finished_at >= done.created_at
    assert done.estimated_finish is None and done.error is None and done.result_files == []

    events = list(sdk.fine_tuning.jobs.list_events(explicit.id, limit=3))  # the SDK pages through them all
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message == f"Created fine-tuning job: {explicit.id}"
    metrics = [event for event in events if event.type == "metrics"]
    assert [event.data["step"] for event in metrics] == [6, 5, 4, 3, 2, 1]  # type: ignore[index]
    assert all(event.data["train_loss"] > 0 and event.data["total_steps"] == 6 for event in metrics)  # type: ignore[index]
    assert [event.created_at for event in events] == sorted((event.created_at for event in events), reverse=True)

    saved = sdk.fine_tuning.jobs.checkpoints.list(explicit.id)
    assert [c.step_number for c in saved.data] == [6, 3]  # one an epoch, newest first
    assert saved.data[1].fine_tuned_model_checkpoint == f"ft:tiny-llama:loradeck:{run_id}:ckpt-step-3"
    assert saved.data[1].fine_tuning_job_id == explicit.id and saved.data[1].object == "fine_tuning.job.checkpoint"
    assert saved.data[1].metrics.train_loss == metrics[3].data["train_loss"]  # type: ignore[index]
    first = sdk.fine_tuning.jobs.checkpoints.list(explicit.id, limit=1)
    assert first.has_more and [c.id for c in first.get_next_page().data] == [saved.data[1].id]

    # Its fine-tuned model trains on in a new job, from its adapter.
    further = sdk.fine_tuning.jobs.create(
        model=done.fine_tuned_model, training_file=files["train"], hyperparameters={"n_epochs": 1, "batch_size": 8}
    )
    assert further.model == done.fine_tuned_model and run_of(stack, further.id)["spec"]["init_from_run"] == run_id

    finished = wait_job(sdk, auto.id)
    assert finished.status == "succeeded", finished.error
    assert finished.fine_tuned_model == f"ft:tiny-llama:addr:{auto.id.removeprefix('ftjob-')}"
    valid = [event.data for event in sdk.fine_tuning.jobs.list_events(auto.id) if event.type == "metrics"]
    assert any(data["valid_loss"] is not None for data in valid)  # type: ignore[index]
    assert wait_job(sdk, further.id).status == "succeeded"


def test_a_running_job_pauses_resumes_under_its_id_and_is_cancelled(sdk: OpenAI, files: dict[str, str]) -> None:
    job = sdk.fine_tuning.jobs.create(
        model="tiny-llama", training_file=files["train"], hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).trained_tokens, 120, "the job's first step")
    running = sdk.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish and running.estimated_finish > running.created_at

    sdk.fine_tuning.jobs.pause(job.id)
    paused = wait_job(sdk, job.id, ("paused", *ENDED))
    assert paused.status == "paused" and paused.fine_tuned_model is None
    step = sdk.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number  # stopping saved one
    with pytest.raises(openai.BadRequestError, match="only a running job can be paused"):
        sdk.fine_tuning.jobs.pause(job.id)

    resumed = sdk.fine_tuning.jobs.resume(job.id)
    assert resumed.id == job.id and resumed.status in ("queued", "running")

    def trained_on() -> bool:
        events = sdk.fine_tuning.jobs.list_events(job.id, limit=1).data
        return bool(events) and events[0].type == "metrics" and events[0].data["step"] > step  # type: ignore[index]

    wait_for(trained_on, 120, "the resumed job to train past its checkpoint")
    sdk.fine_tuning.jobs.cancel(job.id)
    assert wait_job(sdk, job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        sdk.fine_tuning.jobs.cancel(job.id)


def test_dashboard_runs_are_jobs_and_the_list_pages(sdk: OpenAI, stack: Stack) -> None:
    earlier = stack.start_run(max_steps=1, name="an earlier run")
    run = stack.start_run(max_steps=2, name="from the dashboard")
    newest = sdk.fine_tuning.jobs.list(limit=1)
    assert [job.id for job in newest.data] == [f"ftjob-{run['id']}"] and newest.has_more
    job = newest.data[0]
    assert (job.model, job.user_provided_suffix, job.method.type if job.method else None) == (
        "tiny-llama", None, "supervised"
    )  # fmt: skip
    assert job.hyperparameters.batch_size == 2 and job.training_file.endswith("train.jsonl")
    everything = [job.id for job in sdk.fine_tuning.jobs.list(limit=2)]  # the SDK follows `after`
    assert everything[:2] == [job.id, f"ftjob-{earlier['id']}"] and len(everything) == len(set(everything))
    assert [j.id for j in sdk.fine_tuning.jobs.list(after=everything[0], limit=100).data] == everything[1:]
    ended = wait_job(sdk, job.id)
    assert ended.status == "succeeded" and ended.fine_tuned_model == f"ft:tiny-llama:loradeck:{run['id']}"


def test_a_dpo_job_trains_on_preference_pairs_with_its_beta(sdk: OpenAI, stack: Stack) -> None:
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": row["prompt"]}]},
            "preferred_output": [{"role": "assistant", "content": row["completion"]}],
            "non_preferred_output": [{"role": "assistant", "content": row["completion"][:20]}],
        }
        for row in ROWS[:8]
    ]
    body = "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs).encode()
    file = sdk.files.create(file=("pairs.jsonl", body), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=file.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 4}}},
    )
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    assert job.method.dpo.hyperparameters.model_dump() == {
        "batch_size": 4, "beta": 0.2, "learning_rate_multiplier": 1, "n_epochs": 1
    }  # fmt: skip
    spec = run_of(stack, job.id)["spec"]
    assert (spec["objective"], spec["beta"], spec["max_steps"]) == ("dpo", 0.2, 2)
    ended = wait_job(sdk, job.id)
    assert ended.status == "succeeded", ended.error


def test_bad_requests_name_the_parameter(sdk: OpenAI, files: dict[str, str]) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    assert missing.value.body == {  # type: ignore[comparison-overlap]
        "message": "No such fine-tuning job: ftjob-doesnotexist", "type": "invalid_request_error", "param": None,
        "code": None,
    }  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.list_events("ftjob-doesnotexist")
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": "many"}}, "hyperparameters.batch_size"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}}, "method.dpo.hyperparameters.beta"),
        ({"method": {"type": "dpo"}}, "training_file"),  # chat rows are not preference pairs
        ({"validation_file": "file-plain"}, "validation_file"),  # prompt/completion rows beside chat rows
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"suffix": "no spaces please"}, "suffix"),
        ({"model": "no-such-model"}, "model"),
        ({"model": "ft:tiny-llama:loradeck:abc123"}, "model"),
    ]
    before = len(sdk.fine_tuning.jobs.list(limit=100).data)
    for change, param in refusals:
        body: dict[str, Any] = {"model": "tiny-llama", "training_file": files["train"], **change}
        if body.get("validation_file") == "file-plain":
            body["validation_file"] = files["plain"]
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.create(**body)
        assert refused.value.param == param, (change, refused.value.message)
    with pytest.raises(openai.NotFoundError) as no_file:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file="file-doesnotexist")
    assert no_file.value.param == "training_file"
    assert len(sdk.fine_tuning.jobs.list(limit=100).data) == before  # nothing was created
