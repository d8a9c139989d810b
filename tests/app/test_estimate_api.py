"""The estimate through the whole stack: uvicorn, Redis and a Celery worker on the inspect queue."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from tests.conftest import Stack

CONFIGS = Path(__file__).resolve().parents[1] / "worker" / "configs"
LLAMA_8B = CONFIGS / "llama-8b"
# The stored configs are allowed base models here (a path outside the roots is refused, config.json or not).
STACK_ENV = {"LORADECK_MODEL_ROOTS": str(CONFIGS)}
DATASET = str(SAMPLE_DATASET_DIR / "train.jsonl")

# The tiny Llama by hand: embeddings and lm_head vocab x 192, 4 layers of 4 x 192² attention, 3 x 192 x 512 MLP
# and 2 norms of 192, and a final norm.
TINY_VOCAB = json.loads((TINY_MODEL_DIR / "config.json").read_text())["vocab_size"]
TINY_ALL = 2 * TINY_VOCAB * 192 + 4 * (4 * 192 * 192 + 3 * 192 * 512 + 2 * 192) + 192
TINY_LORA_QV = 4 * 2 * (8 * 192 + 192 * 8)


def _spec(**overrides: Any) -> dict[str, Any]:
    return {"base_model": str(TINY_MODEL_DIR), "dataset": DATASET, **overrides}


def test_api_returns_counts_and_memory(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.post("/api/v1/estimate", json=_spec(method="lora", target_modules=["q_proj", "v_proj"]))
        assert answer.status_code == 200, answer.text
        estimate = answer.json()
        assert estimate["params"] == {
            "all": TINY_ALL + TINY_LORA_QV,
            "trainable": TINY_LORA_QV,
            "percent": pytest.approx(100 * TINY_LORA_QV / (TINY_ALL + TINY_LORA_QV)),
        }
        memory = estimate["memory"]
        assert memory["total"] == sum(
            memory[part] for part in ("weights", "adapter", "gradients", "optimizer", "activations")
        )
        assert estimate["model"]["architecture"] == "LlamaForCausalLM"

        # A directory with nothing but config.json: an 8B model estimated without its 16 GB of weights.
        big = client.post("/api/v1/estimate", json=_spec(base_model=str(LLAMA_8B)))
        assert big.status_code == 200, big.text
        assert big.json()["params"]["trainable"] == 20_971_520
        assert big.json()["params"]["all"] == 8_030_261_248 + 20_971_520


def test_api_refuses_bad_specs_naming_the_field(stack: Stack) -> None:
    with stack.client() as client:
        invalid = client.post("/api/v1/estimate", json=_spec(r=0))
        assert invalid.status_code == 422
        assert [error["loc"] for error in invalid.json()["detail"]] == [["body", "r"]]

        # Valid as a spec, but the model has no such layer: the worker says so, as a 400.
        unknown = client.post("/api/v1/estimate", json=_spec(target_modules=["qkv_proj"]))
        assert unknown.status_code == 400
        assert unknown.json()["detail"].startswith("target_modules: qkv_proj not found in LlamaForCausalLM")


def test_form_fragment_renders_the_estimate(stack: Stack) -> None:
    form = {
        "base_model": str(TINY_MODEL_DIR),
        "dataset": DATASET,
        "method": "lora",
        "target_modules": "q_proj, v_proj",
        "use_dora": "false",  # a checkbox sends a hidden "false", then "true" when ticked
        "gradient_checkpointing": "false",
    }
    with stack.client() as client:
        card = client.post("/runs/estimate", data=form, headers={"HX-Request": "true"})
        assert card.status_code == 200
        assert f'<dd id="estimate-all">{TINY_ALL + TINY_LORA_QV:,}</dd>' in card.text
        assert f'<dd id="estimate-trainable">{TINY_LORA_QV:,}</dd>' in card.text
        assert re.search(r'id="estimate-total"><strong>[\d.]+ (MiB|GiB)</strong>', card.text)

        invalid = client.post("/runs/estimate", data=form | {"r": "0"})
        assert invalid.status_code == 200  # the card shows why, in place of the numbers
        assert "No estimate until the form is valid" in invalid.text
        assert "<code>r</code>: Input should be greater than or equal to 1" in invalid.text

        refused = client.post("/runs/estimate", data=form | {"target_modules": "qkv_proj"})
        assert 'id="estimate-error"' in refused.text and "qkv_proj not found" in refused.text


def test_no_inspect_worker_is_a_503(loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A real Redis with nobody on the inspect queue; waiting 1 s rather than 30 keeps the test quick.
    from app import queue

    monkeypatch.setattr(queue, "ask_inspector", functools.partial(queue.ask_inspector, timeout=1))
    from app.main import app

    with TestClient(app) as client:
        answer = client.post("/api/v1/estimate", json=_spec())
        assert answer.status_code == 503
        assert "loradeck worker --queues inspect" in answer.json()["detail"]
        card = client.post("/runs/estimate", data=_spec())
        assert 'id="estimate-error"' in card.text and "no worker answered" in card.text


@pytest.fixture(scope="module")
def phi3_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.worker.families import build_family

    return build_family("phi3", tmp_path_factory.mktemp("phi3"))


def test_phi3_ia3_is_refused_before_queueing_naming_feedforward_modules(stack: Stack, phi3_model: Path) -> None:
    # PEFT has no default (IA)³ modules for Phi-3's fused qkv_proj/gate_up_proj and refuses the config.
    spec = _spec(base_model=str(phi3_model), method="ia3")
    with stack.client() as client:
        estimate = client.post("/api/v1/estimate", json=spec)
        assert estimate.status_code == 422, estimate.text
        assert estimate.json()["detail"][0]["msg"].startswith("Value error, feedforward_modules: PEFT has no default")

        submitted = client.post("/api/v1/runs", json=spec)
        assert submitted.status_code == 422, submitted.text
        assert "feedforward_modules" in submitted.json()["detail"][0]["msg"]
        assert not [run for run in client.get("/api/v1/runs").json() if run["spec"]["base_model"] == str(phi3_model)]

        card = client.post("/runs/estimate", data={**spec, "use_dora": "false", "gradient_checkpointing": "false"})
        assert "feedforward_modules: PEFT has no default" in card.text

        named = {**spec, "target_modules": "qkv_proj, down_proj", "feedforward_modules": "down_proj"}
        answer = client.post("/api/v1/estimate", json=named)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["architecture"] == "Phi3ForCausalLM"
        # The form's quick target_modules choices come from the model's own (fused) module names.
        choices = answer.json()["model"]["target_choices"]
        assert choices == {
            "attention only": "o_proj, qkv_proj",
            "all linear": "all-linear",
            "with embeddings": "o_proj, qkv_proj, gate_up_proj, down_proj, embed_tokens, lm_head",
        }
        form = {**named, "use_dora": "false", "gradient_checkpointing": "false"}
        card = client.post("/runs/estimate", data=form | {"method": "lora", "feedforward_modules": ""})
        assert 'class="secondary target-choice"\n    data-value="o_proj, qkv_proj"' in card.text
