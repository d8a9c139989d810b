"""SFT, then DPO on top, end to end on real parts: the API, a real Celery worker process and Redis, real training
of the tiny model; the DPO run streams its reward metrics live, is scored on the eval pairs, links to the run it
continued, and merges into base + its final adapter."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from tests.conftest import Stack, wait_for
from tests.sse import open_stream

pytestmark = pytest.mark.slow

PAIRS = SAMPLE_DATASET_DIR / "preference.jsonl"


def _download(client: httpx.Client, url: str, into: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(into, filter="data")
    (top,) = list(into.iterdir())
    return top


def _logits(model: Any, prompts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    with torch.no_grad():
        return torch.cat([model(**tokenizer(p, return_tensors="pt")).logits[0] for p in prompts]).float()


def _adapter_dir(client: httpx.Client, run_id: str, into: Path) -> Path:
    artifacts = client.get(f"/api/v1/runs/{run_id}/artifacts").json()
    return _download(client, next(a for a in artifacts if a["kind"] == "adapter")["download_url"], into)


def _finished(stack: Stack, run_id: str) -> dict[str, Any]:
    run = stack.wait_run(run_id)
    assert run["status"] == "succeeded", f"{run['error']}\n{stack.worker_log.read_text()[-3000:]}"
    return run


def test_sft_then_dpo_streams_rewards_links_and_merges(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    sft = stack.start_run(name="sft first", method="lora", quantization="none", max_steps=8)
    sft = _finished(stack, sft["id"])

    dpo_spec = {
        "name": "dpo on top",
        "objective": "dpo",
        "method": "lora",
        "quantization": "none",
        "dataset": str(PAIRS),
        "init_from_run": sft["id"],
        "max_steps": 4,
        "learning_rate": 5e-4,
        "task_eval_rows": 4,
    }
    dpo = stack.start_run(**dpo_spec)
    # The adapter's shape comes with the run it continues.
    assert dpo["spec"]["r"] == sft["spec"]["r"] and dpo["spec"]["init_from_run"] == sft["id"]
    metric_events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=stack.url, timeout=httpx.Timeout(5, read=120)) as reader,
        open_stream(reader, f"/api/v1/runs/{dpo['id']}/events", until=("done",)) as events,
    ):
        metric_events += [data for _, name, data in events if name == "metric"]
    dpo = _finished(stack, dpo["id"])

    # Live: each train point carried the reward metrics; the first step's loss is ln 2 (policy = reference).
    train = [m for m in metric_events if m["kind"] == "train"]
    assert len(train) == 4
    assert {"rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"} <= set(train[0]["values"])
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    stored = client.get(f"/api/v1/runs/{dpo['id']}/metrics").json()
    assert [m["values"]["rewards/margins"] for m in stored if m["kind"] == "train"] == pytest.approx(
        [m["values"]["rewards/margins"] for m in train]
    )

    # Scored on the sample's eval pairs: the starting SFT run beside the DPO adapter.
    preference = dpo["evaluation"]["preference"]
    assert preference["base"]["rows"] == preference["adapter"]["rows"] > 0
    assert 0.0 <= preference["adapter"]["accuracy"] <= 1.0

    # The two run pages link to each other.
    assert f'href="/runs/{sft["id"]}"' in client.get(f"/runs/{dpo['id']}").text
    assert f'href="/runs/{dpo["id"]}"' in client.get(f"/runs/{sft['id']}").text

    # Merged = base + the DPO run's final adapter (which started from the SFT adapter and moved on).
    adapter_dir = _adapter_dir(client, dpo["id"], tmp_path / "dpo")
    assert client.post(f"/api/v1/runs/{dpo['id']}/merge").status_code == 202
    merged_artifact = wait_for(
        lambda: next(
            (a for a in client.get(f"/api/v1/runs/{dpo['id']}/artifacts").json()
             if a["kind"] == "merged" and a["status"] in ("ready", "failed")),
            None,
        ),
        timeout=180,
        what="the merge",
    )  # fmt: skip
    assert merged_artifact["status"] == "ready", merged_artifact["error"]
    merged_dir = _download(client, merged_artifact["download_url"], tmp_path / "merged")
    prompts = [json.loads(line)["prompt"] for line in PAIRS.open(encoding="utf-8")][:3]
    merged = _logits(AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32), prompts)

    def base() -> Any:
        return AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)

    dpo_logits = _logits(PeftModel.from_pretrained(base(), adapter_dir), prompts)
    sft_dir = _adapter_dir(client, sft["id"], tmp_path / "sft")
    sft_logits = _logits(PeftModel.from_pretrained(base(), sft_dir), prompts)
    assert (merged - dpo_logits).abs().max().item() < 1e-3
    assert (dpo_logits - sft_logits).abs().max().item() > 1e-4  # DPO trained on top of the SFT adapter


def test_a_dpo_run_on_sft_rows_is_refused_naming_the_shape(stack: Stack) -> None:
    response = stack.client().post("/api/v1/runs", json={"objective": "dpo", "method": "lora"})
    assert response.status_code == 422
    assert "prompt/chosen/rejected" in response.text
