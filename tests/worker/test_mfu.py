"""MFU, tokens/s and GPU memory: the FLOPs formula by hand for the tiny model, the GPU table, the MFU arithmetic,
the training rows' mean length, and a real run on the CPU recording what it trained on (no MFU: no GPU)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import TINY_MODEL_DIR
from tests.worker.conftest import read_events, run_spec, train_points, train_run
from worker.engine.flops import dense_shapes, flops_per_token, linear_params, lora_params, mfu, peak_flops
from worker.engine.hardware import Throughput, mean_row_tokens

TINY = json.loads((TINY_MODEL_DIR / "config.json").read_text(encoding="utf-8"))
# The tiny Llama: hidden 192, 4 layers, 6 heads of 32 (no grouped-query attention), MLP 512, vocabulary 2816.
TINY_LINEAR = 4 * (4 * 192 * 192 + 3 * 192 * 512) + 192 * 2816  # q, k, v, o and gate, up, down; lm_head
TINY_LORA_R8 = 4 * 8 * (4 * (192 + 192) + 2 * (192 + 512) + (512 + 192))  # A and B of each of the 7 linears


def test_flops_per_token_of_the_tiny_model_by_hand() -> None:
    shapes = dense_shapes(TINY)
    assert shapes is not None
    assert linear_params(shapes) == TINY_LINEAR == 2_310_144
    assert lora_params(shapes, 8) == TINY_LORA_R8 == 116_736
    attention = 12 * 4 * (6 * 32) * 100  # layers x heads x head_dim x a 100-token row
    assert flops_per_token(shapes, 100) == 4 * TINY_LINEAR + 6 * TINY_LORA_R8 + attention == 10_862_592
    # A run's own adapter (its rank, its target modules) counts as it is, not as all-linear r=8.
    assert flops_per_token(shapes, 100, trainable=1000) == 4 * TINY_LINEAR + 6 * 1000 + attention


def test_flops_per_token_of_the_benchmark_shapes() -> None:
    from bench.gpu.plan import MODEL_1B, MODEL_8B

    n, adapters = 786_956_288, 4_653_056
    attention = 12 * 16 * 2048 * 450  # layers x (heads x head_dim) x sequence length
    assert flops_per_token(MODEL_1B, 450) == 4 * n + 6 * adapters + attention == 3_352_690_688
    # the 8B body (Llama-3-8B's, vocabulary 32000): 6.98B in its blocks + 0.13B lm_head, ~29 GFLOPs a token
    assert linear_params(MODEL_8B) == 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 4096 * 32000
    assert flops_per_token(MODEL_8B, 512) == pytest.approx(4 * linear_params(MODEL_8B), rel=0.05)


def test_shapes_come_from_a_dense_decoders_config_only() -> None:
    assert dense_shapes({"text_config": TINY, "vision_config": {}}) == dense_shapes(TINY)  # a multimodal model
    older = {k: v for k, v in TINY.items() if k != "num_key_value_heads"}
    assert dense_shapes(older) == dense_shapes(TINY)  # no grouped-query attention named: as many as heads
    assert dense_shapes(TINY | {"num_local_experts": 8, "num_experts_per_tok": 2}) is None  # experts: routed
    assert dense_shapes({"n_embd": 768, "n_layer": 12, "n_head": 12}) is None  # GPT-2's names: no formula


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # the SXM part
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Tesla T4", None),
        ("cpu", None),
        ("", None),
        (None, None),
    ],
)
def test_the_peak_of_a_gpu_by_its_name(name: str | None, peak: float | None) -> None:
    assert peak_flops(name) == peak


def test_mfu_is_tokens_times_flops_over_the_peak() -> None:
    # 30,000 tokens/s of a 3.35 GFLOPs-a-token model on an H100 SXM: 10.2% of its 989 TFLOPS
    assert mfu(30_000, 3_352_690_688, 989e12) == pytest.approx(30_000 * 3_352_690_688 / 989e12)
    assert mfu(30_000, 3_352_690_688, 989e12) == pytest.approx(0.1017, abs=1e-4)
    assert mfu(30_000, 3_352_690_688, 989e12, gpus=2) == pytest.approx(0.1017 / 2, abs=1e-4)  # tokens of both
    assert mfu(30_000, 3_352_690_688, None) is None  # the CPU, or a GPU not in the table: tokens/s only
    assert mfu(30_000, None, 989e12) is None  # a model shape without a formula
    assert mfu(None, 3_352_690_688, 989e12) is None and mfu(0, 3_352_690_688, 989e12) is None


def test_the_mean_row_length_reads_each_objectives_rows() -> None:
    sft = [{"input_ids": [1] * n, "labels": [1] * n} for n in (10, 20, 60)]
    assert mean_row_tokens(sft) == 30
    pairs = [{"prompt_ids": [1] * 4, "chosen_ids": [1] * 6, "rejected_ids": [1] * 10}]  # TRL's DPO
    assert mean_row_tokens(pairs) == 4 + 8  # the prompt, and each answer in turn after it
    orpo = [{"prompt_input_ids": [1] * 4, "chosen_input_ids": [1] * 6, "rejected_input_ids": [1] * 10}]
    assert mean_row_tokens(orpo) == 4 + 8  # TRL's older trainers name the columns so
    assert mean_row_tokens([{"prompt_ids": [1] * 4, "completion_ids": [1] * 6, "label": True}]) == 10  # KTO
    assert mean_row_tokens([{"prompt": "text, not tokens"}]) is None
    assert mean_row_tokens([]) is None and mean_row_tokens(iter(sft)) is None  # a stream has no length
    # Long datasets are sampled evenly, so rows sorted by length are measured whole.
    sorted_rows = [{"input_ids": [1] * n} for n in range(1, 10_001)]
    assert mean_row_tokens(sorted_rows, limit=100) == pytest.approx(5000.5, rel=0.01)


def test_a_point_carries_mfu_over_its_tokens_per_second(loradeck_env: dict[str, str]) -> None:
    from app.db import get_sessionmaker
    from worker.engine.callbacks import MetricsCallback

    callback = MetricsCallback(run_id="r", sessions=get_sessionmaker(), publisher=SimpleNamespace())  # type: ignore[arg-type]
    callback.throughput.flops_per_token, callback.throughput.peak = 3e9, 989e12  # as on an H100 SXM
    state = SimpleNamespace(global_step=10, num_input_tokens_seen=0, epoch=0.5)
    callback.point_from_log(state, {"loss": 2.0, "num_input_tokens_seen": 1})  # type: ignore[arg-type]
    point = callback.point_from_log(state, {"loss": 1.9, "num_input_tokens_seen": 100_001})  # type: ignore[arg-type]
    assert point is not None and point["tokens_per_sec"] > 0
    assert point["mfu"] == pytest.approx(point["tokens_per_sec"] * 3e9 / 989e12, rel=1e-3)
    assert point["gpu_memory_bytes"] is None and point["gpu_peak_bytes"] is None  # the CPU: no GPU memory
    evaluated = callback.point_from_log(state, {"eval_loss": 1.8})  # type: ignore[arg-type]
    assert evaluated is not None and evaluated["mfu"] is None  # an evaluation trains no tokens


def test_a_cpu_run_records_its_hardware_and_tokens_per_second_without_mfu(loradeck_env: dict[str, str]) -> None:
    run = train_run(run_spec(method="lora", quantization="none", max_steps=4, per_device_train_batch_size=4))
    assert run.status == "succeeded", run.error

    hardware: dict[str, Any] = run.hardware or {}
    assert hardware["device"] == "cpu" and hardware["peak_flops"] is None and hardware["gpus"] == 1
    assert hardware["no_mfu"] == "needs a known GPU"
    rows = hardware["mean_row_tokens"]
    assert 1 < rows <= run.spec["max_seq_length"]
    assert run.params_trainable == TINY_LORA_R8  # all-linear LoRA of rank 8: the formula's adapter, by hand
    expected = 4 * TINY_LINEAR + 6 * TINY_LORA_R8 + 12 * 4 * 192 * rows
    assert hardware["flops_per_token"] == pytest.approx(expected, rel=1e-4)

    points = train_points(run.id)
    assert [p.step for p in points] == [1, 2, 3, 4]
    assert all(p.tokens_per_sec and p.tokens_per_sec > 0 for p in points)
    assert all(p.mfu is None and p.gpu_memory_bytes is None and p.gpu_peak_bytes is None for p in points)
    live = [data for kind, data in read_events(run.id) if kind == "metric" and data["kind"] == "train"]
    assert len(live) == 4 and all(data["mfu"] is None and data["gpu_memory_bytes"] is None for data in live)

    from app.main import app

    with TestClient(app) as client:
        answer = client.get(f"/api/v1/runs/{run.id}").json()
        metrics = client.get(f"/api/v1/runs/{run.id}/metrics").json()
    assert answer["hardware"] == hardware
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["tokens_per_sec"] for m in train] == [p.tokens_per_sec for p in points]
    assert all(m["mfu"] is None and m["gpu_peak_bytes"] is None for m in train)


def _model(config: dict[str, Any], trainable: int) -> Any:
    """A stand-in for the trainer's model: its config, one frozen weight and `trainable` trained values."""
    import torch

    frozen, adapter = (
        torch.nn.Parameter(torch.zeros(10), requires_grad=False),
        torch.nn.Parameter(torch.zeros(trainable)),
    )
    return SimpleNamespace(config=SimpleNamespace(to_dict=lambda: config), parameters=lambda: iter([frozen, adapter]))


def test_the_hardware_says_what_mfu_needs_that_a_run_lacks() -> None:
    rows = [{"input_ids": [1] * 50}, {"input_ids": [1] * 150}]
    hardware = Throughput().begin(_model(TINY, 1000), rows, world_size=1)
    assert hardware == {
        "device": "cpu",
        "peak_flops": None,
        "flops_per_token": flops_per_token(dense_shapes(TINY) or {}, 100, trainable=1000),
        "gpus": 1,  # on the CPU, whatever the world size
        "mean_row_tokens": 100.0,
        "no_mfu": "needs a known GPU",
    }
    # Where a GPU's peak is known, what else MFU needs: a dense model's shape, rows with token counts.
    from worker.engine.hardware import no_mfu

    assert no_mfu(989e12, dense_shapes(TINY), 100.0) is None
    experts = Throughput().begin(_model(TINY | {"num_local_experts": 8}, 1000), rows, world_size=1)
    assert experts["flops_per_token"] is None and no_mfu(989e12, None, 100.0) == "needs a dense model's shape"
    prompts = Throughput().begin(_model(TINY, 1000), [{"prompt": "GRPO writes the rest"}], world_size=1)
    assert prompts["flops_per_token"] is None and prompts["mean_row_tokens"] is None
    assert no_mfu(989e12, dense_shapes(TINY), None) == "needs tokenized training rows"


def test_throughput_on_the_cpu_has_no_gpu_figures() -> None:
    throughput = Throughput()
    assert throughput.figures(1000.0) == {"mfu": None, "gpu_memory_bytes": None, "gpu_peak_bytes": None}


def test_on_a_gpu_a_point_reads_the_allocator_of_the_gpu_trained_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: torch's allocator counters stand in, asked of the device the run trains on (cuda:1 here).
    import torch

    asked: list[Any] = []
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: asked.append(device) or 12 * 1024**3)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: asked.append(device) or 20 * 1024**3)
    throughput = Throughput()
    throughput.cuda, throughput.peak, throughput.flops_per_token = torch.device("cuda:1"), 989e12, 3e9
    assert throughput.figures(100_000.0) == {
        "mfu": round(100_000 * 3e9 / 989e12, 5),
        "gpu_memory_bytes": 12 * 1024**3,
        "gpu_peak_bytes": 20 * 1024**3,
    }
    assert asked == [torch.device("cuda:1")] * 2
    throughput.gpus = 2  # a two-GPU run: its tokens/s are both GPUs' tokens
    assert throughput.figures(100_000.0)["mfu"] == round(100_000 * 3e9 / (2 * 989e12), 5)
