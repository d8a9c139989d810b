"""Preference tuning on the sample task: does it learn, and is it as fast as stock TRL?

    .venv/bin/python bench/preference.py [--repeats 3] [--quick]

Two parts, one invocation:

1. Learning (the engine, `worker.engine.train.run_training`, as the form starts runs): an SFT run with the
   form's sample recipe, DPO from the base, and DPO continued from that SFT run (`init_from_run`), the last two
   with the preset "DPO on the sample, continued from an SFT run" (app/web/forms.py). Recorded from each
   run's own evaluation: held-out preference accuracy and mean margin on the sample's eval pairs, base (or
   the starting SFT run) -> adapter, greedy exact match before -> after, and the wall time.
2. Speed: DPO tokens/s through loradeck's engine beside stock TRL's `DPOTrainer` given the same rows, LoRA
   config, DPOConfig values and seed (a script a user would write, below), each in a fresh process,
   alternating (AB, BA, AB), over the logged steps after the first `WARMUP`. Both sides count non-padding tokens of
   chosen and rejected (TRL's `num_tokens` on stock TRL's side, the run's `tokens_seen` on loradeck's; the
   record says whether they agree), so the ratio is the ratio of step rates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.common import (  # noqa: E402
    pct,
    publish,
    side_speed,
    spawn_child,
    speed_ratio,
    trained_run,
    write_result,
)
from bench.throughput import Scratch, alternate, engine_run  # noqa: E402

TINY = REPO / "assets" / "tiny-llama"
PAIRS = REPO / "assets" / "datasets" / "tw-address" / "preference.jsonl"
TARGET = 0.95  # loradeck's DPO tokens/s over stock TRL's
FROM_BASE = {"learning_rate": 5e-4, "max_steps": 150}
WARMUP = 3
SPEED_SPEC: dict[str, Any] = {
    "objective": "dpo",
    "method": "lora",
    "quantization": "none",
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    "per_device_train_batch_size": 8,
    "max_steps": 30,
    "logging_steps": 1,
    "save_steps": 0,
    "eval_steps": 0,
    "task_eval_rows": 0,
    "regression_prompts": [],
}


# --- stock TRL: what a user would write for the same spec


def stock_dpo(spec: dict[str, Any]) -> dict[str, Any]:
    """DPOTrainer on the spec's rows with peft_config (TRL disables the adapter for the reference), no loradeck."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(spec["dataset"]).read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["base_model"], dtype=torch.float32)
    model.config.use_cache = False
    points: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                seconds = time.perf_counter() - clock["start"]
                points.append({"step": state.global_step, "time": seconds, "tokens": logs.get("num_tokens")})

    args = DPOConfig(
        output_dir=str(Path(spec["_work"]) / "out"),
        per_device_train_batch_size=spec["per_device_train_batch_size"],
        max_steps=spec["max_steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type=spec["lr_scheduler_type"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        seed=spec["seed"],
        beta=spec["beta"],
        loss_type=[spec["loss_type"]],
        max_length=spec["max_seq_length"],
        gradient_checkpointing=spec["gradient_checkpointing"] == "on",  # TRL's configs turn it on unless told
    )
    peft_config = LoraConfig(
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Probe()],
    )
    started = time.perf_counter()
    trainer.train()
    return {"side": "stock", "train_s": time.perf_counter() - started, "points": points}


def ours(spec: dict[str, Any]) -> dict[str, Any]:
    """loradeck's side: a run through the engine (bench/throughput.py's child), its metric points' tokens."""
    return engine_run({k: v for k, v in spec.items() if not k.startswith("_")})


# --- learning: runs as the form starts them


def learning(quick: bool) -> dict[str, Any]:
    from app.web.forms import PRESETS, form_defaults

    def train(name: str, values: dict[str, Any]) -> dict[str, Any]:
        run = trained_run(name, values)
        evaluation = run["evaluation"]
        figures = {
            "run_id": run["run_id"],
            "seconds": run["seconds"],
            "steps": run["steps"],
            "task": evaluation.get("task"),
            "preference": evaluation.get("preference"),
        }
        print(name, json.dumps({k: v for k, v in figures.items() if k != "task"}), flush=True)
        return figures

    _, preset = PRESETS["dpo_sample"]
    shorten = {"max_steps": 20} if quick else {}
    sft = train("sft", form_defaults() | shorten)
    dpo_values = form_defaults(str(PAIRS), "dpo") | preset | shorten
    # From the base, the preset's gentle recipe (made to keep an SFT run's answers) barely moves: the issue's
    # measurement used lr 5e-4 for 150 steps, recorded here the same way.
    from_base = train("dpo-from-base", dpo_values | ({} if quick else FROM_BASE))
    continued = train("sft-then-dpo", dpo_values | {"init_from_run": sft["run_id"]})
    return {"sft": sft, "dpo_from_base": from_base, "sft_then_dpo": continued}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side for the speed figure")
    parser.add_argument("--quick", action="store_true", help="few steps, one repeat: a smoke test of the script")
    parser.add_argument(
        "--part", choices=("both", "speed", "learning"), default="both", help="each writes its own results file"
    )
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, spec_path, result = args.child
        spec = json.loads(Path(spec_path).read_text())
        figures = stock_dpo(spec) if side == "stock" else ours(spec)
        Path(result).write_text(json.dumps(figures))
        return
    repeats = 1 if args.quick else args.repeats
    scratch = Scratch()
    try:
        from app.schemas import RunSpec

        spec = RunSpec.model_validate(
            SPEED_SPEC | {"base_model": str(TINY), "dataset": str(PAIRS)} | ({"max_steps": 8} if args.quick else {})
        ).model_dump(mode="json")
        speed: dict[str, list[dict[str, Any]]] = {"loradeck": [], "stock": []}

        def run(side: str, attempt: int) -> None:
            work = scratch.root / f"{side}-{attempt}"
            figures = side_speed(
                side, spawn_child(__file__, side, spec | {"_work": str(work)}, scratch.env, work), WARMUP
            )
            speed[side].append(figures)
            print(f"{side} #{attempt + 1}: {figures['tokens_per_s']:.0f} tokens/s", flush=True)

        if args.part != "learning":
            alternate(repeats, run, ("loradeck", "stock"))
        learned: dict[str, Any] = {}
        if args.part != "speed":
            os.environ.update({k: v for k, v in scratch.env.items() if k in ("LORADECK_DATA_DIR", "REDIS_URL")})
            from app.db import migrate

            migrate()
            learned = learning(args.quick)
    finally:
        scratch.close()
    command = ".venv/bin/python bench/preference.py" + (" --quick" if args.quick else f" --repeats {repeats}")
    command += f" --part {args.part}" if args.part != "both" else ""
    suffix = "-quick" if args.quick else ""
    if args.part != "learning":
        figures = {"speed": speed_figures(speed, spec)}
        write_result(f"preference-speed{suffix}", command, figures)
        publish("preference-speed", report_speed(command, figures["speed"]), quick=args.quick)
    if args.part != "speed":
        write_result(f"preference-learning{suffix}", command, {"learning": learned})
        publish("preference-learning", report_learning(command, learned), quick=args.quick)


def speed_figures(speed: dict[str, list[dict[str, Any]]], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {k: spec[k] for k in SPEED_SPEC if k != "regression_prompts"},
        "warmup_steps_excluded": WARMUP,
    } | speed_ratio(speed, TARGET)


def report_speed(command: str, speed: dict[str, Any]) -> str:
    lines = [
        "## Preference tuning (DPO): speed beside stock TRL",
        "",
        f"`{command}` — recorded in `results/preference-speed.json`. Tiny model, CPU.",
        "",
        f"Speed: DPO, LoRA r {speed['spec']['r']}, {speed['spec']['max_steps']} steps of "
        f"{speed['spec']['per_device_train_batch_size']} pairs, tokens/s after the first {WARMUP} logged steps "
        "(non-padding tokens of chosen and rejected, counted on each side), each side a fresh process, alternating.",
        "",
        "| side | tokens/s (each run) | median |",
        "| --- | --- | --- |",
        f"| loradeck (engine, live metrics) | {', '.join(f'{v:.0f}' for v in speed['loradeck_tokens_per_s'])} "
        f"| {statistics.median(speed['loradeck_tokens_per_s']):.0f} |",
        f"| stock TRL `DPOTrainer` | {', '.join(f'{v:.0f}' for v in speed['stock_tokens_per_s'])} "
        f"| {statistics.median(speed['stock_tokens_per_s']):.0f} |",
        "",
        f"Ratio {speed['ratio']:.3f} (per pair: {', '.join(f'{r:.3f}' for r in speed['ratio_per_pair'])}); "
        f"target ≥ {TARGET}; same tokens on both sides: {speed['same_tokens']}.",
        "",
        "Both sides run TRL's DPOTrainer on the same batches; loradeck's adds its live metrics and checks. Where",
        "its side comes out ahead (stock TRL also draws progress bars and prints every log), the target is only",
        "that it does not fall behind.",
    ]
    return "\n".join(lines)


def report_learning(command: str, learned: dict[str, Any]) -> str:
    lines = [
        "## Preference tuning (DPO) on the sample task: does it learn?",
        "",
        f"`{command}` — recorded in `results/preference-learning.json`. Tiny model, CPU.",
    ]
    if learned:
        lines += [
            "",
            "| run | steps | wall | preference accuracy (eval pairs) | mean margin | exact match |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for key, label in (("sft", "SFT (the form's sample recipe)"),
                           ("dpo_from_base", "DPO from the base (lr 5e-4, 150 steps)"),
                           ("sft_then_dpo", "SFT, then DPO (`init_from_run`, the preset's recipe)")):  # fmt: skip
            run = learned[key]
            pref = run.get("preference") or {}
            task = run.get("task") or {}
            accuracy = (
                f"{pct(pref['base']['accuracy'])} → {pct(pref['adapter']['accuracy'])}" if pref.get("base") else "–"
            )
            margin = f"{pref['base']['margin']:.2f} → {pref['adapter']['margin']:.2f}" if pref.get("base") else "–"
            exact = (
                f"{pct(task['base']['exact_match'])} → {pct(task['adapter']['exact_match'])}"
                if task.get("base") and task.get("adapter")
                else "–"
            )
            lines.append(f"| {label} | {run['steps']} | {run['seconds']:.0f} s | {accuracy} | {margin} | {exact} |")
        lines += [
            "",
            "Each run is the form's (QLoRA, the sample's recipes), trained and evaluated by the engine; preference",
            "accuracy is the share of the 200 eval pairs whose chosen answer is likelier than the rejected one, the",
            "margin the mean log-probability difference; before → after is base → adapter (for the continued run:",
            "the SFT run → the DPO adapter). The SFT run already prefers every chosen answer (the sample's rejected",
            "answers drop keys, null two fields or swap the district), so DPO on top widens the margin and keeps",
            "exact match within a few points; from the base, DPO learns the preference but not the answer's format.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
