"""What the run form and the API refuse before queueing, through the whole stack (uvicorn, Redis, the Celery
workers, the inspect one included): a base model without weights or tokenizer, every error in one answer,
a dataset outside the roots, and control characters in a dataset's name; and what the pickers offer."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from tests.conftest import QUICK_RUN, Stack, wait_for


def run_count(stack: Stack) -> int:
    return len(httpx.get(stack.url + "/api/v1/runs?limit=1000", timeout=30).json())


def refused(stack: Stack, **spec: Any) -> dict[str, str]:
    """The API's 422 for a spec, as field -> message; nothing was stored."""
    before = run_count(stack)
    response = httpx.post(stack.url + "/api/v1/runs", json=QUICK_RUN | spec, timeout=60)
    assert response.status_code == 422, response.text
    assert run_count(stack) == before, "a run was stored"
    return {str(error["loc"][-1]): error["msg"] for error in response.json()["detail"]}


def model_copy(root: Path, name: str, *drop: str) -> Path:
    """The tiny model copied under `root`, without the files named by `drop` (glob patterns)."""
    directory = root / name
    shutil.copytree(TINY_MODEL_DIR, directory)
    for pattern in drop:
        for path in directory.glob(pattern):
            path.unlink()
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    weightless = model_copy(root, "weightless", "*.safetensors")
    pickled = model_copy(root, "pickled", "*.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K.")
    return {
        "weightless": weightless,
        "pickled": pickled,
        "tokenizerless": model_copy(root, "tokenizerless", "tokenizer.json"),
        "bare": model_copy(root, "bare", "*.safetensors", "tokenizer.json"),
        "whole": model_copy(root, "whole"),
    }


def test_a_model_without_weights_or_tokenizer_is_refused_before_queueing(stack: Stack, models: dict[str, Path]) -> None:
    weights = refused(stack, base_model=str(models["weightless"]))["base_model"]
    assert "no safetensors weights" in weights and str(models["weightless"]) in weights
    assert "tokenizer" not in weights
    pickled = refused(stack, base_model=str(models["pickled"]))["base_model"]
    assert "pytorch_model.bin" in pickled and "safetensors" in pickled
    tokenizer = refused(stack, base_model=str(models["tokenizerless"]))["base_model"]
    assert "no tokenizer" in tokenizer and "tokenizer.json" in tokenizer and "weights" not in tokenizer
    both = refused(stack, base_model=str(models["bare"]))["base_model"]
    assert "no safetensors weights" in both and "no tokenizer" in both
    # The form answers the same at the field, and keeps what was typed.
    form = httpx.post(stack.url + "/runs", data={"base_model": str(models["bare"])}, timeout=60)
    assert form.status_code == 422
    assert "no safetensors weights" in form.text and str(models["bare"]) in form.text
    # A whole copy is taken; the estimate still reads a config alone (an 8B model's, without its weights).
    assert stack.start_run(base_model=str(models["whole"]), max_steps=1)["status"] == "queued"
    estimate = httpx.post(stack.url + "/api/v1/estimate", json={"base_model": str(models["bare"])}, timeout=60)
    assert estimate.status_code == 200, estimate.text


def test_the_picker_shows_unloadable_models_disabled_saying_why(stack: Stack, models: dict[str, Path]) -> None:
    page = httpx.get(stack.url + "/runs/new", timeout=30).text

    def option(name: str) -> str:
        found = re.search(rf'<option value="{re.escape(str(models[name]))}"[^>]*>[^<]*</option>', page)
        assert found, f"{name} is not offered"
        return found.group(0)

    for name in ("weightless", "pickled", "tokenizerless", "bare"):
        assert " disabled>" in option(name), option(name)
        assert "cannot be used" in option(name)
    assert "no tokenizer" in option("tokenizerless") and "weights" not in option("tokenizerless")
    assert "no safetensors weights" in option("weightless") and "tokenizer" not in option("weightless")
    assert " disabled" not in option("whole") and "cannot be used" not in option("whole")


def test_field_errors_and_unknown_modules_come_in_one_answer(stack: Stack) -> None:
    spec = {"method": "lora", "quantization": "none", "target_modules": ["q_proj", "foo_proj"], "learning_rate": -1}
    problems = refused(stack, **spec)
    assert set(problems) == {"learning_rate", "target_modules"}
    assert "foo_proj not found" in problems["target_modules"]
    # The form: both errors at their fields on the first submit.
    form = {"method": "lora", "quantization": "none", "target_modules": "q_proj, foo_proj", "learning_rate": "-1"}
    page = httpx.post(stack.url + "/runs", data=form, timeout=60)
    assert page.status_code == 422
    assert "foo_proj not found" in page.text and "greater than 0" in page.text


def test_a_dataset_outside_the_roots_is_refused_by_its_roots_first(stack: Stack) -> None:
    for field in ("dataset", "eval_dataset"):
        message = refused(stack, **{field: "/etc/passwd"})[field]
        assert "outside the dataset directories" in message and str(SAMPLE_DATASET_DIR.parents[1]) in message
        assert "is not one of" not in message
        page = httpx.post(stack.url + "/runs", data={field: "/etc/passwd"}, timeout=60).text
        assert "outside the dataset directories" in page and "passwd is not one of" not in page


@pytest.mark.parametrize("name", ["ab\u202ecd", "nul\u0000here", "bell\u0007"])
def test_control_characters_in_a_dataset_name_are_refused_naming_the_field(stack: Stack, name: str) -> None:
    before = httpx.get(stack.url + "/api/v1/datasets", timeout=30).json()
    rows = (SAMPLE_DATASET_DIR / "eval.jsonl").read_bytes()
    response = httpx.post(
        stack.url + "/api/v1/datasets",
        files={"file": ("rows.jsonl", rows, "application/jsonl")},
        data={"name": name},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert "name: contains invisible control characters" in response.text
    assert httpx.get(stack.url + "/api/v1/datasets", timeout=30).json() == before


def test_an_archived_runs_merged_model_leaves_the_base_model_picker(stack: Stack) -> None:
    run = stack.start_run(name="merged then archived", method="lora", quantization="none", max_steps=2)
    assert stack.wait_run(run["id"])["status"] == "succeeded"
    merge = httpx.post(f"{stack.url}/api/v1/runs/{run['id']}/merge", timeout=30)
    assert merge.status_code == 202, merge.text

    def merged() -> bool:
        artifacts = httpx.get(f"{stack.url}/api/v1/runs/{run['id']}/artifacts", timeout=30).json()
        return any(a["kind"] == "merged" and a["status"] == "ready" for a in artifacts)

    wait_for(merged, 240, "the merged model")
    merged_dir = str(stack.data_dir / "runs" / run["id"] / "merged")
    assert f'value="{merged_dir}"' in httpx.get(stack.url + "/runs/new", timeout=30).text
    assert httpx.post(f"{stack.url}/api/v1/runs/{run['id']}/archive", timeout=30).status_code == 200
    assert f'value="{merged_dir}"' not in httpx.get(stack.url + "/runs/new", timeout=30).text
    assert httpx.post(f"{stack.url}/api/v1/runs/{run['id']}/unarchive", timeout=30).status_code == 200
    assert f'value="{merged_dir}"' in httpx.get(stack.url + "/runs/new", timeout=30).text


def test_a_model_whose_weights_and_tokenizer_go_while_the_run_waits_fails_at_claim_saying_so(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The trainer is busy with a long run, so the second one waits in the queue while its model loses its weights.
    busy = stack.start_run(name="keeps the trainer busy", method="lora", quantization="none", max_steps=5000)
    stack.wait_run(busy["id"], until=lambda run: run["status"] == "running")
    model = model_copy(tmp_path_factory.mktemp("vanishing"), "vanishing")
    waiting = stack.start_run(name="its weights go", base_model=str(model), max_steps=2)
    (model / "model.safetensors").unlink()
    (model / "tokenizer.json").unlink()
    assert httpx.post(f"{stack.url}/api/v1/runs/{busy['id']}/cancel", timeout=30).status_code == 200
    failed = stack.wait_run(waiting["id"])
    assert failed["status"] == "failed"
    assert "has no safetensors weights" in failed["error"] and str(model) in failed["error"]
    assert "has no tokenizer" in failed["error"] and "sentencepiece" not in failed["error"]
