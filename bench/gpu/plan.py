"""The GPU benchmark's plan, apart from any training: model shapes, which configurations one invocation runs and
how long they take. The arithmetic (FLOPs per token, the GPUs' peak bf16 FLOPS, MFU) is the training engine's own,
worker/engine/flops.py, so a run page's MFU and a benchmark row's are one formula. Imports nothing heavy, so
tests/test_gpu_bench_plan.py checks it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from worker.engine import flops
from worker.engine.flops import flops_per_token, peak_flops  # bench/gpu/run.py takes them from here

# Llama shapes of ~0.85B parameters (a TinyLlama-like body; the 32000-row vocabulary is never all used,
# the tokenizer being the tiny model's) and of ~8B (Llama-3-8B's body, vocabulary cut to 32000).
MODEL_1B: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
MODEL_8B: dict[str, Any] = MODEL_1B | {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
}
MODEL_CPU: dict[str, Any] = MODEL_1B | {  # --dry-run-cpu: same architecture, toy sizes
    "vocab_size": 3008,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}

# loradeck's fast paths, one line each: (RunSpec field, the value that turns it on, what it is for). A field
# RunSpec lacks is skipped with that reason in its row; when one is added to RunSpec, its rows appear. True: the
# fields' "auto"/"on"/"off" (issue 28) take a bool as "on", so the rows run before and after that change.
FAST_PATHS: tuple[tuple[str, Any, str], ...] = (
    ("packing", True, "speed"),
    ("gradient_checkpointing", True, "memory"),
    ("liger_kernel", True, "speed"),  # RunSpec's name for TrainingArguments.use_liger_kernel
    ("torch_compile", True, "speed"),
    ("micro_batch_size", "auto", "speed"),  # the largest pass that fits, accumulation making up the step
)

SIDES = ("bare", "trl", "unsloth", "loradeck")
TOKENS_PER_STEP = 16384  # issue 28: batches that fill the GPU, not batch 8


def mfu(tokens_per_s: float, shapes: dict[str, Any], seq_len: float, gpu: str | None, r: int = 8) -> float | None:
    """A benchmark row's MFU, by shape and GPU name (worker.engine.flops.mfu over its FLOPs per token and peak)."""
    return flops.mfu(tokens_per_s, flops_per_token(shapes, seq_len, r), peak_flops(gpu))


def batch_for(mean_row_tokens: float, tokens_per_step: int = TOKENS_PER_STEP, multiple: int = 4) -> int:
    """The smallest batch (a multiple of `multiple`) whose non-padding tokens reach tokens_per_step."""
    rows = math.ceil(tokens_per_step / mean_row_tokens)
    return multiple * math.ceil(rows / multiple)


@dataclass
class Config:
    """One measured configuration: a side (bare, trl, unsloth, loradeck) of a method on a model shape, with the
    RunSpec fields it changes. `skip` says why it does not run (a field RunSpec lacks, a package not installed)."""

    label: str
    shape: str  # "1b", "8b" or "cpu"
    method: str  # "lora" or "qlora"
    side: str
    changes: dict[str, Any] = field(default_factory=dict)
    skip: str = ""


def configs(
    shapes: list[str],
    methods: list[str],
    spec_fields: set[str],
    installed: dict[str, str],
    unsloth: bool = True,
) -> list[Config]:
    """Every configuration of one invocation, skipped ones included (so the table says why they are absent).

    `spec_fields`: RunSpec's fields; `installed`: side -> "" when its package imports, else the reason."""
    out: list[Config] = []
    for shape in shapes:
        for method in methods:
            if shape == "8b" and method == "lora":
                continue  # the 8B shape is measured in 4-bit only (bf16 weights alone are 16 GB)
            base = f"{shape} {method}"
            out.append(Config(f"{base} bare", shape, method, "bare"))
            out.append(Config(f"{base} trl", shape, method, "trl", skip=installed.get("trl", "")))
            if unsloth:
                out.append(Config(f"{base} unsloth", shape, method, "unsloth", skip=installed.get("unsloth", "")))
            out.append(Config(f"{base} loradeck", shape, method, "loradeck"))
            speed = []
            for name, value, purpose in FAST_PATHS:
                lacking = "" if name in spec_fields else f"RunSpec has no field {name!r}"
                out.append(Config(f"{base} loradeck +{name}", shape, method, "loradeck", {name: value}, lacking))
                if not lacking and purpose == "speed":
                    speed.append((name, value))
            if len(speed) > 1:
                out.append(Config(f"{base} loradeck +all speed", shape, method, "loradeck", dict(speed)))
    return out


# Seconds a child process spends besides its steps (Python, torch, transformers and peft imports, loading the
# saved model, a 4-bit quantization, the engine's database), and the steady tokens/s assumed for the plan
# (bare script, H200, 2026-12-04, batch 8; a larger batch is faster, so these err long), per shape and method.
OVERHEAD_S = {"1b": 25.0, "8b": 60.0, "cpu": 8.0}
ASSUMED_TOKENS_PER_S = {("1b", "lora"): 15000.0, ("1b", "qlora"): 10000.0, ("8b", "qlora"): 2500.0}
BUILD_S = {"1b": 20.0, "8b": 120.0, "cpu": 5.0}  # building and saving the random model


def estimate_s(runnable: list[Config], steps: int, repeats: int, tokens_per_step: float) -> float:
    """Seconds the whole invocation takes by the figures above (an estimate, printed before anything runs)."""
    seconds = sum(BUILD_S[s] for s in {c.shape for c in runnable})
    for c in runnable:
        speed = ASSUMED_TOKENS_PER_S.get((c.shape, c.method), 1.0e9 if c.shape == "cpu" else 2500.0)
        seconds += repeats * (OVERHEAD_S[c.shape] + steps * tokens_per_step / speed)
    return seconds


def fit(
    runnable: list[Config], steps: int, repeats: int, tokens_per_step: float, budget_s: float, min_steps: int
) -> tuple[int, int, float]:
    """(steps, repeats, estimate): fewer repeats first, then fewer steps (not below min_steps), until the
    estimate is within budget_s; the last try's figures when nothing fits (the caller says so)."""
    for r in range(repeats, 0, -1):
        seconds = estimate_s(runnable, steps, r, tokens_per_step)
        if seconds <= budget_s:
            return steps, r, seconds
    for s in range(steps, min_steps - 1, -1):
        seconds = estimate_s(runnable, s, 1, tokens_per_step)
        if seconds <= budget_s:
            return s, 1, seconds
    return min_steps, 1, estimate_s(runnable, min_steps, 1, tokens_per_step)
