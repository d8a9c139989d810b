"""bench/gpu/plan.py's arithmetic, without training: a benchmark row's MFU (the formula and the GPU table are
worker/engine/flops.py's, tested in tests/worker/test_mfu.py), the batch that fills a step, the configurations
one invocation runs and the cut to the time budget."""

from __future__ import annotations

import pytest

from bench.gpu.plan import (
    FAST_PATHS,
    MODEL_1B,
    Config,
    batch_for,
    configs,
    estimate_s,
    fit,
    mfu,
)
from worker.engine.flops import linear_params, lora_params


def test_the_1b_shape_counts_the_parameters_the_h200_run_recorded() -> None:
    # bench/results/gpu-nvidia-h200.json: 852,559,872 = linear weights + embedding + RMSNorm weights
    d, layers = MODEL_1B["hidden_size"], MODEL_1B["num_hidden_layers"]
    embedding, norms = MODEL_1B["vocab_size"] * d, (2 * layers + 1) * d
    assert linear_params(MODEL_1B) == 786_956_288
    assert linear_params(MODEL_1B) + embedding + norms == 852_559_872
    assert lora_params(MODEL_1B, 8) == 16 * 8 * (4096 + 2 * 2560 + 4096 + 2 * 7680 + 7680) == 4_653_056


def test_mfu_of_a_known_speed() -> None:
    # the H200 record's loradeck LoRA speed, 15,192 tokens/s at ~450-token rows: about 5% of 989 TFLOPS
    assert mfu(15_192, MODEL_1B, 450, "NVIDIA H200") == pytest.approx(15_192 * 3_352_690_688 / 989e12)
    assert mfu(15_192, MODEL_1B, 450, "NVIDIA H200") == pytest.approx(0.0515, abs=5e-4)
    # issue 28's goal, 35% MFU, is ~103k tokens/s on the same shape
    assert mfu(103_250, MODEL_1B, 450, "NVIDIA H100 80GB HBM3") == pytest.approx(0.35, abs=1e-3)
    assert mfu(10_000, MODEL_1B, 450, "Tesla T4") is None  # unknown GPU: tokens/s only


def test_batch_fills_16k_tokens_a_step() -> None:
    assert batch_for(450) == 40  # 16384 / 450 = 36.4 rows, rounded up to a multiple of 4
    assert batch_for(450) * 450 >= 16384
    assert batch_for(512) == 32


def test_configurations_skip_what_runspec_or_the_machine_lacks() -> None:
    plan = configs(["1b"], ["lora"], {"packing", "gradient_checkpointing"}, {"unsloth": "unsloth not installed"})
    by_label = {c.label: c for c in plan}
    assert [c.side for c in plan[:4]] == ["bare", "trl", "unsloth", "loradeck"]
    assert by_label["1b lora unsloth"].skip == "unsloth not installed"
    assert by_label["1b lora loradeck +packing"] == Config("1b lora loradeck +packing", "1b", "lora", "loradeck",
                                                           {"packing": True})  # fmt: skip
    assert by_label["1b lora loradeck +torch_compile"].skip == "RunSpec has no field 'torch_compile'"
    assert "1b lora loradeck +all speed" not in by_label  # one speed path alone: no combined row
    # a field added to RunSpec later is one line in FAST_PATHS and gets its row, and the combined one
    fields = {name for name, _, _ in FAST_PATHS}
    full = {c.label: c for c in configs(["1b", "8b"], ["lora", "qlora"], fields, {})}
    assert not any(c.skip for c in full.values())
    assert full["1b qlora loradeck +all speed"].changes == {
        "packing": True, "liger_kernel": True, "torch_compile": True, "micro_batch_size": "auto"
    }  # fmt: skip
    assert "8b lora bare" not in full and "8b qlora bare" in full  # 8B in 4-bit only


def test_the_plan_is_cut_to_the_time_budget() -> None:
    runnable = [c for c in configs(["1b"], ["lora", "qlora"], {"packing"}, {"unsloth": "no"}) if not c.skip]
    assert estimate_s(runnable, 20, 2, 16384) > estimate_s(runnable, 20, 1, 16384) > estimate_s(runnable, 12, 1, 16384)
    steps, repeats, seconds = fit(runnable, 20, 2, 16384, budget_s=1e6, min_steps=12)
    assert (steps, repeats) == (20, 2)
    steps, repeats, seconds = fit(runnable, 20, 2, 16384, budget_s=estimate_s(runnable, 20, 1, 16384), min_steps=12)
    assert (steps, repeats) == (20, 1)  # repeats go first
    steps, repeats, seconds = fit(runnable, 20, 2, 16384, budget_s=estimate_s(runnable, 15, 1, 16384), min_steps=12)
    assert (steps, repeats) == (15, 1) and seconds <= estimate_s(runnable, 15, 1, 16384)
    assert fit(runnable, 20, 2, 16384, budget_s=1, min_steps=12)[:2] == (12, 1)  # nothing fits: the least, said


def test_only_takes_labels_and_prefixes() -> None:
    from bench.gpu.run import selected

    assert selected("8b qlora bare", "8b qlora bare,8b qlora loradeck")
    assert selected("8b qlora loradeck", "8b qlora bare,8b qlora loradeck")
    assert not selected("8b qlora loradeck +packing", "8b qlora bare,8b qlora loradeck")
    assert selected("1b lora loradeck +packing", "1b lora loradeck*")
    assert not selected("1b qlora loradeck", "1b lora loradeck*")


def test_a_configuration_not_started_for_the_budget_is_a_skipped_row() -> None:
    from bench.gpu.run import OVER_BUDGET, summarize

    config = Config("1b lora trl", "1b", "lora", "trl")
    info = {"warmup": 5, "rows": {"mean": 450.0}}
    assert summarize(config, [], [OVER_BUDGET, OVER_BUDGET], info, "NVIDIA H200")["skipped"] == OVER_BUDGET
    assert summarize(config, [], [OVER_BUDGET, "CUDA out of memory"], info, None)["error"] == "CUDA out of memory"
