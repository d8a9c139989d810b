"""Training on one NVIDIA GPU, every way issue 28 compares: a random-weight Llama of ~0.85B parameters (and,
with --big, an ~8B shape in 4-bit), bf16 LoRA and QLoRA (NF4, double quantization), each through (a) the bare
Trainer script (bench/bare.py), (b) stock TRL SFTTrainer (bench/gpu/stock.py), (c) loradeck's engine with each
of its fast paths off and on (FAST_PATHS in bench/gpu/plan.py; a field RunSpec lacks is a skipped row), and
(d) Unsloth where it imports ("not installed" otherwise): tokens/s, MFU, peak GPU memory, the last step's loss.

    python bench/gpu/run.py [--steps 20] [--repeats 2] [--big] [--time-budget 480]   # on a CUDA GPU
    python bench/gpu/run.py --plan                     # the configurations and the time estimate, nothing run
    python bench/gpu/run.py --dry-run-cpu              # every configuration on the CPU, toy shape, 3 steps
    python bench/gpu/run.py --report [RESULT.json]     # the table again, from a recorded result, into the README

No network is needed: the models are built here (seeded), the tokenizer is the tiny model's, the rows are
cut from assets/corpus. Every run is a fresh process (so peak memory and CUDA state are its own); the
configurations run in order, then in reverse order, and so on (alternating repeats), and each row is the
median of its runs. A run that fails (out of memory, an import) is recorded with its error and the rest
goes on. Before anything runs the plan is printed with its estimated time; repeats, then steps, are cut
until the estimate fits --time-budget. Results go to bench/results/gpu-<gpu name>.json and bench/README.md's
gpu-<gpu name> section (bench/common.py's publish). See bench/gpu/README.md for the device command.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench.common import spawn_child  # noqa: E402
from bench.gpu.plan import (  # noqa: E402
    MODEL_1B,
    MODEL_8B,
    MODEL_CPU,
    TOKENS_PER_STEP,
    Config,
    batch_for,
    configs,
    fit,
    flops_per_token,
    mfu,
    peak_flops,
)

WARMUP = 5  # logged steps left out of tokens/s (CUDA's first kernels, cuBLAS's choices)
DRY_STEPS, DRY_WARMUP = 3, 1
SEQ = 512
SHAPES = {"1b": MODEL_1B, "8b": MODEL_8B, "cpu": MODEL_CPU}
GRACE_S = 60  # past --time-budget by this much, the runs left are not started (the device stops a call at 600 s)
OVER_BUDGET = "not run: the --time-budget was spent"
MICRO_8B = 8  # the 8B shape's per-device batch; gradient accumulation makes up the tokens per step
# What the engine and the bare script import beyond what a CUDA PyTorch image usually holds.
NEEDED = ("transformers", "peft", "accelerate", "bitsandbytes", "sqlalchemy", "alembic", "pydantic_settings", "redis")


def preflight(dry_run: bool) -> None:
    """Refuse early, saying what to do: no CUDA device, or missing packages (bench/gpu/bootstrap.sh)."""
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit(
            "bench/gpu/run.py needs an NVIDIA GPU and torch sees none (torch.cuda.is_available() is False, "
            f"torch {torch.__version__}). Run it on a machine with a CUDA device, or try the code paths on "
            "this one with --dry-run-cpu."
        )
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        try:  # what those need in turn (pydantic_core, mako, dotenv, ...): the engine's own imports tell
            for module in ("worker.engine.train", "app.db", "alembic.command"):
                importlib.import_module(module)
        except ImportError as exc:
            missing = [exc.name or str(exc)]
    if missing:
        raise SystemExit(
            f"missing Python packages: {', '.join(missing)}. Without network: `bash bench/gpu/bootstrap.sh` "
            "installs the wheels bench/gpu/wheels.sh put in .whl/ (see bench/gpu/README.md)."
        )


def installed() -> dict[str, str]:
    """Each stock side's package: "" when it imports, else why not (shown in its row)."""
    reasons: dict[str, str] = {}
    for side, modules in {"trl": ("trl", "datasets"), "unsloth": ("unsloth",)}.items():
        for module in modules:
            if importlib.util.find_spec(module) is None:
                reasons[side] = f"{module} not installed"
                break
        else:
            if side == "unsloth":  # it imports torch's CUDA parts and patches on import: try in a child
                probe = subprocess.run([sys.executable, "-c", "import unsloth"], capture_output=True, text=True)
                if probe.returncode:
                    reasons[side] = "unsloth does not import: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    return reasons


def selected(label: str, only: str) -> bool:
    """--only: a term is a label, or a prefix ending in '*' ("1b lora loradeck*": it and its fast paths)."""
    terms = [t.strip() for t in only.split(",") if t.strip()]
    return any(label.startswith(t[:-1]) if t.endswith("*") else label == t for t in terms)


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_slug(name: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (name or "cpu").lower()).strip("-")


def spawn(config: Config, spec: dict[str, Any], env: dict[str, str], work: Path) -> dict[str, Any]:
    """One configuration's run in a fresh process; its figures (points, train_s, peak_gpu_bytes, final_loss)."""
    from bench.throughput import spawn as spawn_engine_or_bare

    if config.side in ("bare", "loradeck"):
        return spawn_engine_or_bare(config.side, spec, env, work)
    return spawn_child(str(REPO / "bench" / "gpu" / "stock.py"), config.side, spec, env, work)


def spec_for(config: Config, model: Path, rows: Path, steps: int, batch: int, accumulation: int) -> dict[str, Any]:
    from app.schemas import RunSpec

    # precision and the 4-bit compute dtype stay "auto": bf16 on a GPU that has it, fp32 on a CPU.
    values = {
        "method": config.method,
        "base_model": str(model),
        "dataset": str(rows),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation,
        "max_seq_length": SEQ,
        "save_steps": 0,
        "eval_steps": 0,
        # Each switch off unless the row turns it on: auto would choose for the "off" rows (worker.engine.fastpaths).
        **dict.fromkeys(("packing", "gradient_checkpointing", "liger_kernel", "torch_compile"), "off"),
        "micro_batch_size": batch,  # passes as the bare script's
    } | config.changes
    return RunSpec.model_validate(values).model_dump(mode="json")


def summarize(
    config: Config, runs: list[dict[str, Any]], errors: list[str], shape_info: dict[str, Any], gpu: str | None
) -> dict[str, Any]:
    from bench.throughput import steady_tokens_per_s

    row: dict[str, Any] = {
        "label": config.label,
        "shape": config.shape,
        "method": config.method,
        "side": config.side,
        "changes": config.changes,
    }
    if config.skip:
        return row | {"skipped": config.skip}
    if not runs:
        if errors and all(e == OVER_BUDGET for e in errors):
            return row | {"skipped": OVER_BUDGET}
        return row | {"error": next((e for e in errors if e != OVER_BUDGET), "no run")[-1500:]}
    errors = [e for e in errors if e != OVER_BUDGET]
    warmup = shape_info["warmup"]
    speeds = [steady_tokens_per_s(r["points"], warmup) for r in runs]
    speed = statistics.median(speeds)
    seq_len = SEQ if config.changes.get("packing") else shape_info["rows"]["mean"]
    peak = max((r.get("peak_gpu_bytes") or 0) for r in runs) or None
    return row | {
        "tokens_per_s": speed,
        "tokens_per_s_runs": [round(s, 1) for s in speeds],
        "flops_per_token": flops_per_token(SHAPES[config.shape], seq_len),
        "attention_seq_len": seq_len,
        "mfu": mfu(speed, SHAPES[config.shape], seq_len, gpu),
        "peak_gpu_bytes": peak,
        "final_loss": statistics.median(r["final_loss"] for r in runs),
        "tokens": runs[0]["tokens"],
        "steps": runs[0]["steps"],
        "errors": [e[-600:] for e in errors],
        "runs": [{k: v for k, v in r.items() if k != "points"} for r in runs],
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "unsloth"):
        try:
            out[name] = str(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def report(figures: dict[str, Any]) -> str:
    gib = 2**30
    gpu = figures["gpu"] or "CPU (dry run)"
    peak = figures.get("peak_bf16_flops")
    lines = [
        f"## Training on one GPU: {gpu}",
        "",
        f"`{figures['command']}` — recorded in `results/{figures['name']}.json`; {figures['wall_s']:.0f} s. "
        "Random-weight Llama shapes, built where they train: "
        + "; ".join(
            f"{shape} = {info['params'] / 1e6:.{0 if info['params'] > 1e8 else 2}f}M parameters "
            f"(hidden {info['shapes']['hidden_size']}, "
            f"{info['shapes']['num_hidden_layers']} layers), batch {info['batch']} × gradient accumulation "
            f"{info['accumulation']}, rows of {info['rows']['min']}–{info['rows']['max']} tokens (mean "
            f"{info['rows']['mean']:.0f}): ~{info['tokens_per_step']:.0f} tokens a step"
            for shape, info in figures["models"].items()
        )
        + f". LoRA r=8 all-linear, {figures['steps']} steps, tokens/s (non-padding) after {figures['warmup']} "
        f"warm-up steps, median of {figures['repeats']} alternating runs each. MFU: LoRA's model FLOPs per token "
        "(4 × linear weights + 6 × adapter weights + 12 × layers × attention width × sequence length; "
        "bench/gpu/plan.py) × tokens/s over the GPU's peak dense bf16 "
        + (f"({peak / 1e12:.0f} TFLOPS)" if peak else "(not in the table: no MFU)")
        + "; peak memory: `torch.cuda.max_memory_allocated()` over `trainer.train()` in each run's own process. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in figures['versions'].items() if v)}.",
        "",
        "| configuration | tokens/s | vs bare | MFU | peak memory | loss at the last step | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    bare = {(r["shape"], r["method"]): r.get("tokens_per_s") for r in figures["rows"] if r["side"] == "bare"}
    for r in figures["rows"]:
        if "tokens_per_s" not in r:
            note = r.get("skipped") or "failed: " + r.get("error", "").strip().splitlines()[-1][:120]
            lines.append(f"| {r['label']} | – | – | – | – | – | {note} |")
            continue
        base = bare.get((r["shape"], r["method"]))
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "–"
        share = "–" if r["mfu"] is None else f"{r['mfu']:.1%}"
        memory = "–" if not r["peak_gpu_bytes"] else f"{r['peak_gpu_bytes'] / gib:.2f} GiB"
        note = f"{len(r['errors'])} run(s) failed" if r["errors"] else ""
        speed, loss = f"{r['tokens_per_s']:.0f}", f"{r['final_loss']:.4f}"
        lines.append(f"| {r['label']} | {speed} | {ratio} | {share} | {memory} | {loss} | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (cut to fit the budget)")
    parser.add_argument("--min-steps", type=int, default=12, help="never cut below this many steps")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration (cut to fit the budget)")
    parser.add_argument("--batch", type=int, default=0, help="rows a step; 0: enough for 16k non-padding tokens")
    parser.add_argument("--methods", default="lora,qlora", help="comma-separated: lora, qlora")
    parser.add_argument("--big", action="store_true", help="also the ~8B shape, QLoRA only (needs ~40 GB)")
    parser.add_argument("--no-unsloth", action="store_true", help="leave out the Unsloth rows")
    parser.add_argument(
        "--only", default="", help="comma-separated labels to run; 'PREFIX*' matches the labels it starts"
    )
    parser.add_argument("--time-budget", type=float, default=480, help="seconds the whole run may take (estimate)")
    parser.add_argument("--plan", action="store_true", help="print the configurations and estimate, run nothing")
    parser.add_argument("--dry-run-cpu", action="store_true", help="every configuration on the CPU, toy shape")
    parser.add_argument("--report", nargs="?", const="", default=None, metavar="RESULT.json",
                        help="print the table of a recorded result and write it into bench/README.md")  # fmt: skip
    args = parser.parse_args()
    if args.report is not None:
        return report_only(args.report, dry=args.dry_run_cpu)
    started = time.monotonic()
    dry = args.dry_run_cpu
    if not args.plan:
        preflight(dry)

    from app.schemas import RunSpec

    shapes = ["cpu"] if dry else ["1b", *(["8b"] if args.big else [])]
    reasons = installed()
    plan = configs(shapes, args.methods.split(","), set(RunSpec.model_fields), reasons, unsloth=not args.no_unsloth)
    if args.only:
        plan = [c for c in plan if selected(c.label, args.only)]
    runnable = [c for c in plan if not c.skip]
    if dry:
        steps, repeats, estimate, warmup = DRY_STEPS, 1, 0.0, DRY_WARMUP
    else:
        steps, repeats, estimate = fit(runnable, args.steps, args.repeats, TOKENS_PER_STEP, args.time_budget,
                                       args.min_steps)  # fmt: skip
        warmup = min(WARMUP, steps // 3)
    print(f"plan: {len(runnable)} configurations × {repeats} repeats, {steps} steps each; "
          f"estimated {estimate:.0f} s of a {args.time_budget:.0f} s budget", flush=True)  # fmt: skip
    for c in plan:
        print(f"  {c.label}" + (f"  — skipped: {c.skip}" if c.skip else ""), flush=True)
    if estimate > args.time_budget:
        print(f"warning: even {steps} steps × 1 repeat is estimated over the budget; use --only or --methods")
    if args.plan:
        return

    import torch

    from bench.packing import make_dataset, token_lengths
    from bench.throughput import Scratch, build_llama

    gpu = gpu_name()
    scratch = Scratch(prefix="loradeck-gpu-", require_redis=False)
    try:
        models: dict[str, Any] = {}
        rows = scratch.root / "rows.jsonl"
        make_dataset(rows, 384, 512, 1.0, rows=64 if dry else max(400, steps * 48))
        lengths = token_lengths(rows, SEQ)
        for shape in dict.fromkeys(c.shape for c in runnable):  # only the shapes something runs on
            path = scratch.root / f"llama-{shape}"
            params = build_llama(path, SHAPES[shape], dtype="float32" if dry else "bfloat16",
                                 device="cpu" if dry else "cuda")  # fmt: skip
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            rows_a_step = 2 if dry else args.batch or batch_for(lengths["mean"])
            batch = min(rows_a_step, MICRO_8B) if shape == "8b" else rows_a_step
            accumulation = math.ceil(rows_a_step / batch)
            models[shape] = {
                "path": path,
                "params": params,
                "shapes": SHAPES[shape],
                "batch": batch,
                "accumulation": accumulation,
                "rows": lengths,
                "tokens_per_step": batch * accumulation * lengths["mean"],
                "warmup": warmup,
            }
            print(f"model {shape}: {params / 1e6:.2f}M parameters, batch {batch} × {accumulation}, "
                  f"~{batch * accumulation * lengths['mean']:.0f} tokens a step", flush=True)  # fmt: skip
        runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in runnable}
        errors: dict[str, list[str]] = {c.label: [] for c in runnable}
        for attempt in range(repeats):
            for c in runnable if attempt % 2 == 0 else runnable[::-1]:
                info = models[c.shape]
                if not dry and time.monotonic() - started > args.time_budget + GRACE_S:
                    errors[c.label].append(OVER_BUDGET)  # stop in time to write what was measured
                    print(f"{c.label} #{attempt + 1}: {OVER_BUDGET}", flush=True)
                    continue
                spec = spec_for(c, info["path"], rows, steps, info["batch"], info["accumulation"])
                work = scratch.root / "runs" / f"{re.sub(r'[^a-z0-9]+', '-', c.label)}-{attempt}"
                try:
                    figures = spawn(c, spec, scratch.env, work)
                except Exception as exc:  # an OOM, an import: recorded in the row, the rest goes on
                    said = (str(exc) or traceback.format_exc()).replace(str(scratch.root), "<scratch>")
                    errors[c.label].append(said.replace(f"{REPO}/", ""))  # no local paths in the record
                    print(f"{c.label} #{attempt + 1}: FAILED {str(exc).strip().splitlines()[-1:]}", flush=True)
                    continue
                runs[c.label].append(figures)
                from bench.throughput import steady_tokens_per_s

                speed = steady_tokens_per_s(figures["points"], warmup)
                peak = (figures.get("peak_gpu_bytes") or 0) / 2**30
                share = mfu(speed, SHAPES[c.shape], SEQ if c.changes.get("packing") else lengths["mean"], gpu)
                utilisation = "–" if share is None else f"{share:.1%}"
                print(f"{c.label} #{attempt + 1}: {speed:.0f} tokens/s, MFU {utilisation}, "
                      f"peak {peak:.2f} GiB, loss {figures['final_loss']:.4f} ({time.monotonic() - started:.0f} s)",
                      flush=True)  # fmt: skip
        table_rows = [
            summarize(c, runs.get(c.label, []), errors.get(c.label, []), models.get(c.shape, {}), gpu) for c in plan
        ]  # a skipped configuration's shape may not have been built
        live = scratch.live_feed
    finally:
        scratch.close()

    name = f"gpu-{gpu_slug(gpu)}" + ("-dry-run-quick" if dry else "")
    command = "python bench/gpu/run.py " + shlex.join(sys.argv[1:])
    figures = {
        "name": name,
        "command": command.strip(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "peak_bf16_flops": peak_flops(gpu),
        "versions": versions(),
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "estimated_s": round(estimate),
        "wall_s": round(time.monotonic() - started),
        "live_feed": live,
        "models": {s: {k: v for k, v in m.items() if k != "path"} for s, m in models.items()},
        "rows": table_rows,
    }
    from bench.common import RESULTS_DIR, publish, write_result

    figures["earlier_runs"] = earlier_runs(RESULTS_DIR / f"{name}.json")
    path = write_result(name, command.strip(), figures)
    print(f"recorded in {path.relative_to(REPO)}")
    publish(name, report(figures), quick=dry)


def earlier_runs(path: Path) -> list[dict[str, Any]]:
    """What an earlier record of this GPU said, in short, kept beside the new one (the file is rewritten)."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    kept = list(old.get("earlier_runs", []))
    if isinstance(old.get("rows"), list):  # this script's shape (an older record's "rows" are its row lengths)
        rows = {r["label"]: {k: r.get(k) for k in ("tokens_per_s", "mfu", "peak_gpu_bytes", "final_loss")}
                for r in old["rows"] if "tokens_per_s" in r}  # fmt: skip
        return [*kept, {"command": old["command"], "date": old["date"], "rows": rows}]
    methods = {
        method: {
            side: {k: r[side][k] for k in ("tokens_per_s", "peak_gpu_bytes", "final_loss")}
            for side in ("bare", "loradeck")
            if side in r
        }  # fmt: skip
        for method, r in old.get("methods", {}).items()
    }
    # an older record's own earlier runs stay as they were
    short = {"command": old.get("command"), "date": old.get("date"), "batch": old.get("batch"), "methods": methods}
    return [*kept, short]


def report_only(result: str, *, dry: bool) -> None:
    """--report: the table of a recorded result (the newest gpu-*.json when none is named), into the README."""
    from bench.common import RESULTS_DIR, publish

    if result:
        path = Path(result)
    else:
        pattern = "gpu-*-dry-run-quick.json" if dry else "gpu-*.json"
        found = [p for p in RESULTS_DIR.glob(pattern) if dry or not p.name.endswith("-quick.json")]
        # this script's shape only (a list of rows), not an older record's
        found = [p for p in found if isinstance(json.loads(p.read_text()).get("rows"), list)]
        if not found:
            raise SystemExit(f"no recorded result of this shape in bench/results/{pattern}")
        path = max(found, key=os.path.getmtime)
    figures = json.loads(path.read_text())
    publish(figures["name"], report(figures), quick=dry or path.name.endswith("-quick.json"))


if __name__ == "__main__":
    main()
