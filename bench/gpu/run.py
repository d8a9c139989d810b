"""Training on one NVIDIA GPU: a random-weight Llama of ~0.85B parameters, bf16 LoRA and QLoRA (NF4, double
quantization), each through loradeck's engine and through the bare script, with tokens/s and peak GPU memory.

    python bench/gpu/run.py [--steps 60] [--repeats 2]     # on a machine with a CUDA GPU, under 10 minutes
    python bench/gpu/run.py --dry-run-cpu                  # the same code paths on a CPU, with a toy model

No network is needed: the model is built here (seeded), the tokenizer is the tiny model's, the rows are cut
from assets/corpus. Every run is a fresh process (bench/bare.py, or bench/throughput.py's engine child),
loradeck and bare alternating; peak memory is torch.cuda.max_memory_allocated() over `trainer.train()`,
reset in each process after loading. Results go to bench/results/gpu-<gpu name>.json and a section of
bench/README.md. See bench/gpu/README.md for the setup (bitsandbytes from a local wheel).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

# Llama shapes of ~0.85B parameters (a TinyLlama-like body; the 32000-row vocabulary is never all used,
# the tokenizer being the tiny model's).
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
MODEL_CPU: dict[str, Any] = MODEL_1B | {  # --dry-run-cpu: same architecture, toy sizes
    "vocab_size": 3008,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}
WARMUP = 5  # logged steps left out of tokens/s (CUDA's first kernels, cuBLAS's choices)
TARGET = 0.98
# What the engine and the bare script import beyond what a CUDA PyTorch image usually holds.
NEEDED = ("transformers", "peft", "accelerate", "bitsandbytes", "sqlalchemy", "alembic", "pydantic_settings", "redis")


def preflight(dry_run: bool) -> None:
    """Refuse early, saying what to do: no CUDA device, or missing packages (bitsandbytes from .whl/)."""
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit(
            "bench/gpu/run.py needs an NVIDIA GPU and torch sees none (torch.cuda.is_available() is False, "
            f"torch {torch.__version__}). Run it on a machine with a CUDA device, or try the code paths on "
            "this one with --dry-run-cpu."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        wheels = sorted((REPO / ".whl").glob("bitsandbytes-*.whl"))
        if wheels:
            print(f"installing {wheels[-1].name} from .whl/ (no network)", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", str(wheels[-1])], check=True)
            importlib.invalidate_caches()
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        try:  # what those need in turn (pydantic_core, mako, dotenv, ...): the engine's own imports tell
            for module in ("worker.engine.train", "app.db", "alembic.command"):
                importlib.import_module(module)
        except ImportError as exc:
            missing = [exc.name or str(exc)]
    if missing:
        raise SystemExit(
            f"missing Python packages: {', '.join(missing)}. Without network: put their wheels in .whl/ and run "
            "`pip install --no-index --no-deps .whl/*.whl` (bitsandbytes alone: "
            "`pip install --no-index .whl/bitsandbytes-*.whl`); bench/gpu/README.md lists the wheels."
        )


def gpu_slug() -> str:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def measure(scratch: Any, spec: dict[str, Any], repeats: int, label: str) -> dict[str, Any]:
    from bench.throughput import alternate, own_share, spawn, steady_tokens_per_s

    runs: dict[str, list[dict[str, Any]]] = {"loradeck": [], "bare": []}

    def run(side: str, attempt: int) -> None:
        figures = spawn(side, spec, scratch.env, scratch.root / f"{label}-{side}-{attempt}")
        runs[side].append(figures)
        peak = (figures.get("peak_gpu_bytes") or 0) / 2**30
        speed = steady_tokens_per_s(figures["points"], WARMUP)
        print(f"{label} {side} #{attempt + 1}: {speed:.0f} tokens/s, peak {peak:.2f} GiB", flush=True)

    alternate(repeats, run)
    sides = {
        side: {
            "tokens_per_s": statistics.median(steady_tokens_per_s(r["points"], WARMUP) for r in rs),
            "train_tokens_per_s": statistics.median(r["tokens"] / r["train_s"] for r in rs),
            "peak_gpu_bytes": max(r.get("peak_gpu_bytes") or 0 for r in rs),
            "final_loss": statistics.median(r["final_loss"] for r in rs),
            "tokens": rs[0]["tokens"],
            "runs": [{k: v for k, v in r.items() if k != "points"} for r in rs],
        }
        for side, rs in runs.items()
    }
    ratio = sides["loradeck"]["tokens_per_s"] / sides["bare"]["tokens_per_s"]
    return sides | {
        "ratio": ratio,
        "loradeck_own_share": statistics.median(own_share(r) for r in runs["loradeck"]),
        "memory_ratio": sides["loradeck"]["peak_gpu_bytes"] / max(1, sides["bare"]["peak_gpu_bytes"]),
        "same_tokens": sides["loradeck"]["tokens"] == sides["bare"]["tokens"],
        "target": TARGET,
        "met": ratio >= TARGET,
    }


def report(command: str, gpu: str, params: int, figures: dict[str, Any]) -> str:
    gib, shapes = 2**30, figures["shapes"]
    lines = [
        f"## Training on one GPU: {gpu}",
        "",
        f"`{command}` — recorded in `results/gpu-{gpu_slug()}.json`. Random Llama, {params / 1e6:.0f}M parameters "
        f"(hidden {shapes['hidden_size']}, {shapes['num_hidden_layers']} layers, {shapes['num_attention_heads']} "
        f"heads, {shapes['num_key_value_heads']} KV heads, intermediate {shapes['intermediate_size']}, vocabulary "
        f"{shapes['vocab_size']}), {figures['precision']} LoRA and QLoRA (NF4, double quantization, "
        f"{figures['precision']} compute), "
        f"r=8 all-linear, batch {figures['batch']}, rows of "
        f"{figures['rows']['min']}–{figures['rows']['max']} tokens, {figures['steps']} steps; tokens/s after "
        f"{WARMUP} warm-up steps, medians of {figures['repeats']} alternating runs per side; peak memory is "
        f"`torch.cuda.max_memory_allocated()` over `trainer.train()`; loradeck's own work is the time in its "
        "metric callback plus its threads' CPU, over `trainer.train()` (see the throughput section). Live feed: "
        f"{'a private redis-server' if figures['live_feed'] else 'none (no redis-server; events buffered)'}.",
        "",
        "| what | bare tokens/s | loradeck tokens/s | ratio | target | met | loradeck's own work "
        "| peak memory bare / loradeck | final loss bare / loradeck |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, r in figures["methods"].items():
        b, o = r["bare"], r["loradeck"]
        lines.append(
            f"| {method} | {b['tokens_per_s']:.0f} | {o['tokens_per_s']:.0f} | {r['ratio']:.3f}x | ≥ {TARGET}x | "
            f"{'yes' if r['met'] else 'no'} | {r['loradeck_own_share']:.2%} of train time | "
            f"{b['peak_gpu_bytes'] / gib:.2f} / {o['peak_gpu_bytes'] / gib:.2f} GiB | "
            f"{b['final_loss']:.4f} / {o['final_loss']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side per method")
    parser.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size")
    parser.add_argument("--dry-run-cpu", action="store_true", help="a toy model on the CPU, 6 steps, nothing recorded")
    args = parser.parse_args()
    preflight(args.dry_run_cpu)

    from app.schemas import RunSpec
    from bench.common import update_readme_section, write_result
    from bench.packing import make_dataset, token_lengths
    from bench.throughput import Scratch, build_llama

    dry = args.dry_run_cpu
    steps, repeats = (WARMUP + 1, 1) if dry else (args.steps, args.repeats)
    scratch = Scratch(prefix="loradeck-gpu-", require_redis=False)
    try:
        model, rows = scratch.root / "llama", scratch.root / "rows.jsonl"
        params = build_llama(model, MODEL_CPU if dry else MODEL_1B, dtype="float32" if dry else "bfloat16",
                             device="cpu" if dry else "cuda")  # fmt: skip
        make_dataset(rows, 384, 512, 1.0, rows=max(400, steps * args.batch))
        lengths = token_lengths(rows, 512)
        print(f"model: {params / 1e6:.0f}M parameters; rows: {lengths}", flush=True)
        results: dict[str, Any] = {}
        for method in ("lora", "qlora"):
            # precision and the 4-bit compute dtype stay "auto": bf16 on a GPU that has it, fp32 on a CPU.
            spec = RunSpec.model_validate(
                {"method": method, "base_model": str(model), "dataset": str(rows), "max_steps": steps,
                 "per_device_train_batch_size": args.batch, "max_seq_length": 512, "save_steps": 0}
            ).model_dump(mode="json")  # fmt: skip
            results[method] = {"spec": spec} | measure(scratch, spec, repeats, method)
        live = scratch.live_feed
    finally:
        scratch.close()

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (dry run)"
    figures = {
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "precision": "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32",
        "bitsandbytes": importlib.import_module("bitsandbytes").__version__,
        "params": params,
        "shapes": MODEL_CPU if dry else MODEL_1B,
        "steps": steps,
        "repeats": repeats,
        "batch": args.batch,
        "rows": lengths,
        "live_feed": live,
        "methods": results,
    }
    command = "python bench/gpu/run.py" + (" --dry-run-cpu" if dry else f" --steps {steps} --repeats {repeats}")
    table = report(command, gpu, params, figures)
    if dry:
        print("dry run on the CPU: nothing recorded")
    else:
        write_result(f"gpu-{gpu_slug()}", command, figures)
        update_readme_section(f"gpu-{gpu_slug()}", table)
    print(table)


if __name__ == "__main__":
    main()
