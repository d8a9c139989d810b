"""The three journeys end to end, on real parts: a real redis-server, a real Celery worker process and
uvicorn as subprocesses, real QLoRA training of the tiny model, and the merged model loaded with stock
transformers after it came through the download."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from tests.conftest import Stack, wait_for
from tests.sse import Event, open_stream

pytestmark = pytest.mark.slow


class SSECollector(threading.Thread):
    """Reads a run's event stream as a browser would, noting the run's status when each metric arrives."""

    def __init__(self, stack: Stack, run_id: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.run_id = stack, run_id
        self.events: list[Event] = []
        self.status_at_metric: list[str] = []

    def run(self) -> None:
        with (
            httpx.Client(base_url=self.stack.url, timeout=httpx.Timeout(5, read=60)) as client,
            open_stream(client, f"/api/v1/runs/{self.run_id}/events", until=("done",)) as events,
        ):
            for event in events:
                self.events.append(event)
                if event.name == "metric" and len(self.status_at_metric) < 3:
                    self.status_at_metric.append(client.get(f"/api/v1/runs/{self.run_id}").json()["status"])


def _download(client: httpx.Client, url: str, into: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert int(response.headers["content-length"]) == len(response.content)
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(into, filter="data")
    (top,) = list(into.iterdir())
    return top


def _logits(model: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**tokenizer(p, return_tensors="pt")).logits[0] for p in prompts]).float()


def test_qlora_run_streams_metrics_then_merges_and_downloads(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    # eval_steps 0: one eval pass at the end (tests/app/test_eval_during_training.py has the evaluations over a run).
    spec = {"name": "e2e qlora", "method": "qlora", "max_steps": 30, "per_device_train_batch_size": 4, "eval_steps": 0}
    run = client.post("/api/v1/runs", json=spec).json()
    collector = SSECollector(stack, run["id"])
    collector.start()

    final = wait_for(
        lambda: (r := client.get(f"/api/v1/runs/{run['id']}").json())["status"] in ("succeeded", "failed") and r,
        timeout=300,
        what="the run to finish",
        every=0.25,
    )
    assert final["status"] == "succeeded", f"{final['error']}\n{stack.worker_log.read_text()[-3000:]}"
    collector.join(timeout=30)

    # Live: metric events came over SSE while the run was still running, each with its stream id.
    names = [name for _, name, _ in collector.events]
    kinds = [data["kind"] for _, name, data in collector.events if name == "metric"]
    # Every step, then the eval loss on the sample's eval file (a spec that names no eval data gets it).
    assert kinds == ["train"] * 30 + ["eval"] and names[-1] == "done"
    assert "evaluating" in names and names.index("evaluating") < names.index("evaluation")
    assert "running" in collector.status_at_metric
    params = next(data for _, name, data in collector.events if name == "params")
    assert params["trainable"] == final["params_trainable"] > 0
    assert params["all"] == final["params_all"]
    ids = [event_id for event_id, _, _ in collector.events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))

    # The stored history equals what was streamed, step by step.
    metrics = client.get(f"/api/v1/runs/{run['id']}/metrics").json()
    assert [(m["step"], m["kind"]) for m in metrics] == [(step, "train") for step in range(1, 31)] + [(30, "eval")]
    streamed = [data["loss"] for _, name, data in collector.events if name == "metric"]
    assert [m["loss"] for m in metrics] == pytest.approx(streamed)

    # The adapter downloads and loads with stock PEFT.
    artifacts = client.get(f"/api/v1/runs/{run['id']}/artifacts").json()
    adapter = next(a for a in artifacts if a["kind"] == "adapter")
    adapter_dir = _download(client, adapter["download_url"], tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    prompts = [json.loads(line)["prompt"] for line in (SAMPLE_DATASET_DIR / "eval.jsonl").open()][:3]
    base_logits = _logits(base, tokenizer, prompts)
    adapted = PeftModel.from_pretrained(base, adapter_dir)
    adapted_logits = _logits(adapted, tokenizer, prompts)

    # One click: merge, wait for the check, download the merged model.
    merge = client.post(f"/api/v1/runs/{run['id']}/merge")
    assert merge.status_code == 202
    merged_artifact = wait_for(
        lambda: next(
            (a for a in client.get(f"/api/v1/runs/{run['id']}/artifacts").json()
             if a["kind"] == "merged" and a["status"] in ("ready", "failed")),
            None,
        ),
        timeout=180,
        what="the merge",
        every=0.25,
    )  # fmt: skip
    assert merged_artifact["status"] == "ready", merged_artifact["error"]
    merged_dir = _download(client, merged_artifact["download_url"], tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    merged_logits = _logits(merged, AutoTokenizer.from_pretrained(merged_dir), prompts)
    assert (merged_logits - adapted_logits).abs().max().item() < 1e-3
    assert (merged_logits - base_logits).abs().max().item() > 1e-3
    assert merged_artifact["details"]["max_abs_diff"] < 1e-3


def test_events_resume_after_last_event_id(stack: Stack) -> None:
    """A reconnect with Last-Event-ID gets exactly the events after it, nothing twice."""
    client = stack.client()
    spec = {"method": "lora", "max_steps": 5, "per_device_train_batch_size": 2, "eval_steps": 0}
    run = client.post("/api/v1/runs", json=spec).json()
    wait_for(
        lambda: client.get(f"/api/v1/runs/{run['id']}").json()["status"] in ("succeeded", "failed"),
        timeout=180,
        what="the run to finish",
        every=0.25,
    )
    everything = SSECollector(stack, run["id"])
    everything.run()
    middle = len(everything.events) // 2
    with open_stream(client, f"/api/v1/runs/{run['id']}/events", last_event_id=everything.events[middle].id) as events:
        resumed = [event.id for event in events]
    assert resumed == [event_id for event_id, _, _ in everything.events[middle + 1 :]]
