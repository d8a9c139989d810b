"""GRPO on the sample task: which recipe learns, and is loradeck's engine as fast as stock TRL?

    .venv/bin/python bench/grpo.py [--part calibration|speed|both] [--seeds 0,1,2] [--repeats 3] [--quick]
    .venv/bin/python bench/grpo.py --part tries --recipe NAME [--seeds 0]

Three parts, each with its own record:

1. tries (stock TRL 1.16 `GRPOTrainer` + peft, no loradeck): a recipe of `RECIPES` on a seed, from an SFT adapter
   of the sample trained here with TRL's `SFTTrainer` (the form's sample recipe cut to `SFT_STEPS` steps, cached
   under the scratch dir), scored greedily on the first `EVAL_ROWS` eval rows before and after: exact match, the
   share of JSON fields right, and the mean reward GRPO trained on (json_fields + exact, computed here as
   app.objectives.rewards.DEFINITIONS states them). Each try is appended to results/grpo-tries.json, kept across
   invocations: the calibration table lists every recipe tried.
2. calibration (the engine, `worker.engine.train.run_training`, as the form starts runs): per seed, an SFT run of
   the sample (`SFT_STEPS` steps, LoRA) and GRPO continued from it (`init_from_run`) with the chosen recipe
   (`CHOSEN`, the preset's values over the form's defaults). Recorded from the GRPO run's own evaluation: held-out
   mean reward greedy and sampled (the starting SFT adapter -> the trained adapter), exact match and fields right.
   The target: the reward rises and exact match does not fall, on every seed.
3. speed: GRPO tokens/s through loradeck's engine beside stock TRL's `GRPOTrainer` given the same rows, LoRA
   config, GRPOConfig values, rewards and seed (a script a user would write, below), each in a fresh process,
   alternating (AB, BA, AB), over the logged steps after the first `WARMUP`. Both sides count the tokens TRL
   counts (prompt + completion of every completion, its `num_tokens`; the run's `tokens_seen` on loradeck's side).
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
    RESULTS_DIR,
    machine,
    pct,
    portable,
    publish,
    side_speed,
    spawn_child,
    speed_ratio,
    trained_run,
    write_result,
)
from bench.throughput import Scratch, alternate, engine_run  # noqa: E402

TINY = REPO / "assets" / "tiny-llama"
SAMPLE = REPO / "assets" / "datasets" / "tw-address"
TRAIN, EVAL = SAMPLE / "train.jsonl", SAMPLE / "eval.jsonl"
TARGET = 0.95  # loradeck's GRPO tokens/s over stock TRL's
WARMUP = 3
EVAL_ROWS = 100  # held-out rows scored greedily, before and after
SFT_STEPS = 150  # the start: the form's sample recipe (400 steps: 98% exact) cut here, about half the rows exact
SFT_START: dict[str, Any] = {"method": "lora", "quantization": "none", "max_steps": SFT_STEPS}
# Each recipe tried on the sample: RunSpec fields (GRPO's own and the shared training ones), and `trl` for the
# GRPOConfig values loradeck's form does not offer (stock TRL tries only). Rewards: json_fields + exact, weight 1.
COMMON: dict[str, Any] = {
    "loss_type": "dapo",
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "max_completion_length": 96,  # the sample's answers are 39-50 tokens
}
RECIPES: dict[str, dict[str, Any]] = {
    "A": COMMON
    | {"learning_rate": 3e-4, "beta": 0.05, "temperature": 0.7, "num_generations": 8,
       "per_device_train_batch_size": 32, "max_steps": 100},
    "B": COMMON
    | {"learning_rate": 1e-3, "beta": 0.04, "temperature": 0.9, "num_generations": 8,
       "per_device_train_batch_size": 64, "max_steps": 80},
    "C": COMMON
    | {"learning_rate": 1e-3, "beta": 0.04, "temperature": 0.5, "num_generations": 16,
       "per_device_train_batch_size": 64, "max_steps": 80, "trl": {"num_iterations": 2}},
    "D": COMMON
    | {"learning_rate": 5e-4, "beta": 0.04, "temperature": 0.5, "num_generations": 8,
       "per_device_train_batch_size": 64, "max_steps": 120},
}  # fmt: skip
CHOSEN = "D"
SPEED_SPEC: dict[str, Any] = {
    "objective": "grpo",
    "method": "lora",
    "quantization": "none",
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "rewards": [{"function": "json_fields", "weight": 1.0}, {"function": "exact", "weight": 1.0}],
    "learning_rate": 5e-4,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "beta": 0.04,
    "loss_type": "dapo",
    "num_generations": 8,
    "per_device_train_batch_size": 32,
    "max_completion_length": 64,
    "temperature": 0.5,
    "max_steps": 20,
    "logging_steps": 1,
    "save_steps": 0,
    "eval_steps": 0,
    "task_eval_rows": 0,
    "regression_prompts": [],
}


# --- the rewards, as app.objectives.rewards.DEFINITIONS states them (a user's own few lines on stock TRL's side)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except (ValueError, RecursionError):
        return None


def json_fields(completion: str, reference: str) -> float:
    expected, got = _parsed(reference), _parsed(completion)
    if not isinstance(expected, dict) or not isinstance(got, dict):
        return 0.0
    if not expected:
        return 1.0
    return sum(1.0 for key, value in expected.items() if key in got and got[key] == value) / len(expected)


def exact(completion: str, reference: str) -> float:
    got, expected = _parsed(completion), _parsed(reference)
    if got is not None and expected is not None:
        return float(got == expected)
    return float(completion.strip() == reference.strip())


def _trl_reward(function: Any) -> Any:
    def reward(prompts: list[Any], completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [function(text, ref) for text, ref in zip(texts, reference, strict=True)]

    reward.__name__ = function.__name__
    return reward


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- stock TRL: what a user would write


def _tiny() -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    return model, tokenizer


def _lora(spec: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def stock_sft(seed: int, out: Path) -> Path:
    """The start of the tries: TRL's SFTTrainer with the form's sample recipe, cut to SFT_STEPS (cached)."""
    if (out / "adapter_config.json").exists():
        return out
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from app.web.form_presets import SAMPLE_TASK_RECIPE

    recipe = SAMPLE_TASK_RECIPE | {"max_steps": SFT_STEPS}
    model, tokenizer = _tiny()
    args = SFTConfig(
        output_dir=str(out.with_name(out.name + "-work")),
        per_device_train_batch_size=recipe["per_device_train_batch_size"],
        max_steps=recipe["max_steps"],
        learning_rate=recipe["learning_rate"],
        lr_scheduler_type=recipe["lr_scheduler_type"],
        warmup_steps=recipe["warmup_ratio"],  # transformers 5: a float below 1 is a share of the steps
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        seed=seed,
        gradient_checkpointing=False,
        max_length=256,
        disable_tqdm=True,
        bf16=False,
        use_cpu=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_rows(TRAIN)),
        processing_class=tokenizer,
        peft_config=_lora(recipe | {"lora_dropout": 0.0}),
    )
    trainer.train()
    model = trainer.model
    model.save_pretrained(out)  # type: ignore[union-attr,operator]  # the PeftModel SFTTrainer made
    return out


def greedy_scores(model: Any, tokenizer: Any, rows: list[dict[str, str]], max_new_tokens: int) -> dict[str, float]:
    """Greedy answers to the rows' prompts (encoded as GRPOTrainer encodes them: bos + text): exact match, share of
    fields right, and the mean reward json_fields + exact."""
    import torch

    model.eval()
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(rows), 20):
            batch = rows[start : start + 20]
            encoded = tokenizer([r["prompt"] for r in batch], return_tensors="pt", padding=True, padding_side="left")
            out = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers += tokenizer.batch_decode(out[:, encoded.input_ids.shape[1] :], skip_special_tokens=True)
    fields = [json_fields(a, r["completion"]) for a, r in zip(answers, rows, strict=True)]
    exacts = [exact(a, r["completion"]) for a, r in zip(answers, rows, strict=True)]
    return {
        "rows": len(rows),
        "exact_match": sum(exacts) / len(rows),
        "field_accuracy": sum(fields) / len(rows),
        "reward": (sum(fields) + sum(exacts)) / len(rows),
    }


def stock_grpo(spec: dict[str, Any]) -> dict[str, Any]:
    """GRPOTrainer on the spec's rows, from `_adapter` (a PeftModel: TRL copies it into its "ref" adapter for
    beta > 0) or a fresh LoRA (peft_config: the base is the reference); `_eval_rows` scored before and after."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tokenizer = _tiny()
    peft_config = None
    if spec.get("_adapter"):
        model = PeftModel.from_pretrained(model, spec["_adapter"], is_trainable=True)
    else:
        peft_config = _lora(spec)
    eval_rows = _rows(EVAL)[: spec.get("_eval_rows", 0)]
    before = greedy_scores(model, tokenizer, eval_rows, spec["max_completion_length"]) if eval_rows else None
    points: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "reward" in logs:
                seconds = time.perf_counter() - clock["start"]
                keep = ("reward", "reward_std", "frac_reward_zero_std", "kl", "completions/mean_length")
                point = {"step": state.global_step, "time": seconds, "tokens": logs.get("num_tokens")}
                points.append(point | {k: round(float(logs[k]), 4) for k in keep if k in logs})

    args = GRPOConfig(
        output_dir=str(Path(spec["_work"]) / "out"),
        per_device_train_batch_size=spec["per_device_train_batch_size"],
        max_steps=spec["max_steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type=spec["lr_scheduler_type"],
        warmup_steps=spec["warmup_ratio"],
        logging_steps=spec["logging_steps"],
        save_strategy="no",
        report_to=[],
        bf16=False,
        use_cpu=True,
        seed=spec["seed"],
        data_seed=spec["seed"],
        gradient_checkpointing=spec["gradient_checkpointing"] == "on",  # TRL's configs turn it on unless told
        disable_tqdm=True,
        beta=spec["beta"],
        loss_type=spec["loss_type"],
        epsilon=spec["epsilon"],
        num_generations=spec["num_generations"],
        max_completion_length=spec["max_completion_length"],
        temperature=spec["temperature"],
        **spec.get("trl", {}),
    )
    functions = {"json_fields": json_fields, "exact": exact}
    trainer = GRPOTrainer(
        model=model,
        args=args,
        reward_funcs=[_trl_reward(functions[r["function"]]) for r in spec["rewards"]],
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "reference": r["completion"]} for r in _rows(TRAIN)]),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Probe()],
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    after = greedy_scores(trainer.model, tokenizer, eval_rows, spec["max_completion_length"]) if eval_rows else None
    return {"side": "stock", "train_s": train_s, "points": points, "before": before, "after": after}


# --- part 1: tries with stock TRL


def tries(names: list[str], seeds: list[int], scratch_root: Path) -> list[dict[str, Any]]:
    from app.schemas import RunSpec

    done = []
    for name in names:
        for seed in seeds:
            recipe = RECIPES[name]
            adapter = stock_sft(seed, scratch_root / f"sft-seed{seed}-steps{SFT_STEPS}")
            values = {k: v for k, v in recipe.items() if k != "trl"}
            spec = RunSpec.model_validate(
                SPEED_SPEC | values | {"base_model": str(TINY), "dataset": str(TRAIN), "seed": seed}
            ).model_dump(mode="json")
            spec |= {"trl": recipe.get("trl", {}), "_adapter": str(adapter), "_eval_rows": EVAL_ROWS}
            spec["logging_steps"] = 10
            work = scratch_root / f"try-{name}-{seed}"
            figures = spawn_child(
                __file__, "stock", spec | {"_work": str(work)}, os.environ | {"PYTHONPATH": str(REPO)}, work
            )
            record = {
                "recipe": name,
                "values": recipe,
                "seed": seed,
                "sft_steps": SFT_STEPS,
                "eval_rows": EVAL_ROWS,
                "before": figures["before"],
                "after": figures["after"],
                "train_s": round(figures["train_s"], 1),
                "sampled": [{k: p[k] for k in ("step", "reward", "kl") if k in p} for p in figures["points"]],
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
            print(name, seed, json.dumps({k: record[k] for k in ("before", "after", "train_s")}), flush=True)
            append_try(record)
            done.append(record)
    return done


def append_try(record: dict[str, Any]) -> None:
    path = RESULTS_DIR / "grpo-tries.json"
    kept: dict[str, Any] = {"benchmark": "grpo-tries", "tries": []}
    if path.exists():
        kept = json.loads(path.read_text(encoding="utf-8"))
    kept["tries"].append(portable(record))
    kept["command"] = ".venv/bin/python bench/grpo.py --part tries --recipe NAME --seeds S (one entry per try)"
    kept["machine"] = machine()
    path.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


# --- part 2: calibration through the engine


def calibration(seeds: list[int], quick: bool) -> dict[str, Any]:
    from app.web.form_presets import PRESETS, form_defaults

    def train(name: str, values: dict[str, Any]) -> dict[str, Any]:
        run = trained_run(name, values)
        evaluation, metrics = run["evaluation"], run["metrics"]
        figures = {
            "run_id": run["run_id"],
            "seconds": run["seconds"],
            "steps": run["steps"],
            "task": evaluation.get("task"),
            "reward": evaluation.get("reward"),
            "sampled": [
                {"step": m.step, "reward": (m.values or {}).get("reward"), "kl": (m.values or {}).get("kl")}
                for m in metrics
                if m.values and "reward" in m.values and (m.step % 10 == 0 or m.step == 1)
            ],
        }
        print(name, json.dumps({k: v for k, v in figures.items() if k != "sampled"}), flush=True)
        return figures

    recipe = {k: v for k, v in RECIPES[CHOSEN].items() if k != "trl"}
    shorten = {"max_steps": 6} if quick else {}
    evaluated = {"task_eval_rows": 8 if quick else EVAL_ROWS, "eval_max_new_tokens": recipe["max_completion_length"]}
    _, preset = PRESETS["grpo_sample"]
    results: list[dict[str, Any]] = []
    for seed in seeds:
        sft = train(f"sft-{seed}", form_defaults() | SFT_START | evaluated | {"seed": seed} | shorten)
        grpo_values = form_defaults(str(TRAIN), "grpo") | preset | SFT_START | recipe | evaluated | shorten
        grpo = train(f"grpo-{seed}", grpo_values | {"seed": seed, "init_from_run": sft["run_id"]})
        results.append({"seed": seed, "sft": sft, "grpo": grpo, "verdict": verdict(grpo)})
    return {
        "chosen": CHOSEN,
        "recipe": recipe,
        "sft_steps": SFT_STEPS,
        "eval_rows": evaluated["task_eval_rows"],
        "seeds": results,
        "met": all(r["verdict"]["met"] for r in results),
    }


def verdict(grpo: dict[str, Any]) -> dict[str, Any]:
    """The issue's target on one seed: held-out greedy reward above the starting SFT adapter's, exact match not
    below it."""
    reward, task = grpo["reward"], grpo["task"]
    raised = reward["adapter"]["greedy"] > reward["base"]["greedy"]
    kept = task["adapter"]["exact_match"] >= task["base"]["exact_match"]
    return {"reward_raised": raised, "exact_kept": kept, "met": raised and kept}


# --- part 3: speed


def ours(spec: dict[str, Any]) -> dict[str, Any]:
    """loradeck's side: a run through the engine (bench/throughput.py's child), its metric points' tokens."""
    return engine_run({k: v for k, v in spec.items() if not k.startswith("_")})


def speed_figures(speed: dict[str, list[dict[str, Any]]], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {k: spec[k] for k in SPEED_SPEC if k != "regression_prompts"},
        "warmup_steps_excluded": WARMUP,
    } | speed_ratio(speed, TARGET)


# --- the README tables


def report_speed(command: str, speed: dict[str, Any]) -> str:
    spec = speed["spec"]
    lines = [
        "## GRPO: speed beside stock TRL",
        "",
        f"`{command}` — recorded in `results/grpo-speed.json`. Tiny model, CPU.",
        "",
        f"GRPO from the base, LoRA r {spec['r']}, {spec['max_steps']} steps of {spec['per_device_train_batch_size']} "
        f"completions ({spec['num_generations']} per prompt, up to {spec['max_completion_length']} tokens, "
        f"temperature {spec['temperature']}, beta {spec['beta']}), rewards json_fields + exact; tokens/s (TRL's "
        f"count: prompt + completion of every completion) after the first {WARMUP} logged steps, each side a fresh "
        "process, alternating.",
        "",
        "| side | tokens/s (each run) | median |",
        "| --- | --- | --- |",
        f"| loradeck (engine, live metrics, samples) | {', '.join(f'{v:.0f}' for v in speed['loradeck_tokens_per_s'])} "
        f"| {statistics.median(speed['loradeck_tokens_per_s']):.0f} |",
        f"| stock TRL `GRPOTrainer` | {', '.join(f'{v:.0f}' for v in speed['stock_tokens_per_s'])} "
        f"| {statistics.median(speed['stock_tokens_per_s']):.0f} |",
        "",
        f"Ratio {speed['ratio']:.3f} (per pair: {', '.join(f'{r:.3f}' for r in speed['ratio_per_pair'])}); "
        f"target ≥ {TARGET}: {'met' if speed['met'] else 'not met'}; "
        f"same tokens on both sides: {speed['same_tokens']}.",
    ]
    return "\n".join(lines)


def _recipe_text(values: dict[str, Any]) -> str:
    rate = f"{values['learning_rate']:.0e}".replace("e-0", "e-")
    text = (
        f"lr {rate}, beta {values['beta']}, temperature {values['temperature']}, "
        f"{values['num_generations']} × {values['per_device_train_batch_size'] // values['num_generations']} prompts, "
        f"{values['max_steps']} steps"
    )
    return text + "".join(f", {k} {v}" for k, v in values.get("trl", {}).items())


def report_calibration(command: str, calibrated: dict[str, Any], tried: list[dict[str, Any]]) -> str:
    lines = [
        "## GRPO on the sample task: which recipe learns?",
        "",
        f"`{command}` — recorded in `results/grpo-calibration.json`; the tries in `results/grpo-tries.json`. "
        "Tiny model, CPU.",
        "",
        f"Every try starts from an SFT adapter of the sample (the form's recipe cut to {SFT_STEPS} steps: about half "
        f"the answers exact) and is scored greedily on the first {EVAL_ROWS} eval rows, before → after; the reward "
        "is the one trained on, json_fields + exact (0 to 2). All use loss dapo, a constant learning rate, LoRA r16.",
        "",
        "### The recipes tried (stock TRL `GRPOTrainer`, `--part tries`)",
        "",
        "| recipe | seed | reward | exact match | fields right | train | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in tried:
        b, a = t["before"], t["after"]
        ok = a["reward"] > b["reward"] and a["exact_match"] >= b["exact_match"]
        lines.append(
            f"| {t['recipe']}: {_recipe_text(t['values'])} | {t['seed']} | {b['reward']:.3f} → {a['reward']:.3f} "
            f"| {pct(b['exact_match'])} → {pct(a['exact_match'])} "
            f"| {b['field_accuracy']:.1%} → {a['field_accuracy']:.1%} | {t['train_s']:.0f} s "
            f"| {'raises both' if ok else 'no'} |"
        )
    lines += [
        "",
        "Why A–C did not learn and D does: the signal is there — from the start, 16 answers sampled at temperature "
        "0.5 hold an exact one for 72% of 40 eval prompts where the greedy answer is exact for 45% (measured once "
        "while choosing, not by this script) — but each step's gradient is noisy: with 4 prompts a step, lr 3e-4 "
        "moved nothing in 100 steps (KL 0.008) and lr 1e-3 drifted (KL 0.1, C lost 10 points of exact); at "
        "temperature 0.9 most of a group's spread is new mistakes, not fixes. D samples closer to the greedy answer "
        "(temperature 0.5: a group differs where the model hesitates, a copied digit, a section or floor), takes 8 "
        "prompts a step and a middle rate; its held-out reward dips for about 30 steps (1.38 → 1.30 at step 30, seed "
        "0) and rises from step 60 (1.39 → 1.55 → 1.60 at 60, 90, 120): shorter runs would show no gain.",
    ]
    if calibrated:
        engine_starts = ", ".join(
            f"{s['seed']}: {pct(s['sft']['task']['adapter']['exact_match'])}" for s in calibrated["seeds"]
        )
        stock_starts = ", ".join(
            f"{t['seed']}: {pct(t['before']['exact_match'])}" for t in tried if t["recipe"] == calibrated["chosen"]
        )
        lines += [
            "",
            f"### The chosen recipe ({calibrated['chosen']}) through loradeck's engine, continued from an SFT run",
            "",
            "| seed | SFT run | GRPO run | reward, greedy | reward, sampled | exact match | fields right | met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in calibrated["seeds"]:
            reward, task = s["grpo"]["reward"], s["grpo"]["task"]
            sampled = (
                f"{reward['base']['sampled']:.3f} → {reward['adapter']['sampled']:.3f}"
                if reward["base"].get("sampled") is not None
                else "–"
            )
            lines.append(
                f"| {s['seed']} | {s['sft']['seconds']:.0f} s | {s['grpo']['seconds']:.0f} s "
                f"| {reward['base']['greedy']:.3f} → {reward['adapter']['greedy']:.3f} | {sampled} "
                f"| {pct(task['base']['exact_match'])} → {pct(task['adapter']['exact_match'])} "
                f"| {task['base']['field_accuracy']:.1%} → {task['adapter']['field_accuracy']:.1%} "
                f"| {'yes' if s['verdict']['met'] else 'no'} |"
            )
        lines += [
            "",
            "Each run is loradeck's engine as the form starts it (LoRA r16, no quantization): the SFT run the form's "
            f'sample recipe cut to {SFT_STEPS} steps, the GRPO run the preset "GRPO on the sample, continued from an '
            f"SFT run\" with recipe {calibrated['chosen']}'s values and `init_from_run` the SFT run. Reward and exact "
            "match come from the GRPO run's own evaluation (its base side is the SFT adapter): greedy, and sampled "
            "once at the run's temperature; a run's time includes its evaluation. Exact match of the engine's SFT "
            f"starts by seed: {engine_starts}; of the tries' starts (TRL's SFTTrainer): {stock_starts}.",
            "",
            "This shows that the objective learns from its rewards, not a better way to train this task: the form's "
            "SFT recipe run to its 400 steps reaches 98% exact in under 2 minutes.",
            "",
            f"Target (issue 26): held-out greedy reward above the starting SFT adapter's and exact match not below "
            f"it, on every seed: {'met' if calibrated['met'] else 'not met'}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("both", "speed", "calibration", "tries"), default="both")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (calibration, tries)")
    parser.add_argument("--recipe", default=CHOSEN, help=f"tries: a recipe of RECIPES ({', '.join(RECIPES)}) or all")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side for the speed figure")
    parser.add_argument("--quick", action="store_true", help="few steps, one repeat: a smoke test of the script")
    parser.add_argument("--report", action="store_true", help="rewrite the README sections from the records, no runs")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, spec_path, result = args.child
        spec = json.loads(Path(spec_path).read_text())
        figures = stock_grpo(spec) if side == "stock" else ours(spec)
        Path(result).write_text(json.dumps(figures))
        return
    if args.report:
        republish()
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    repeats = 1 if args.quick else args.repeats
    if args.part == "tries":
        import tempfile

        names = list(RECIPES) if args.recipe == "all" else [args.recipe]
        tries(names, seeds, Path(os.environ.get("GRPO_BENCH_CACHE") or tempfile.mkdtemp(prefix="loradeck-grpo-")))
        return
    scratch = Scratch()
    speed: dict[str, list[dict[str, Any]]] = {"loradeck": [], "stock": []}
    calibrated: dict[str, Any] = {}
    try:
        from app.schemas import RunSpec

        spec = RunSpec.model_validate(
            SPEED_SPEC | {"base_model": str(TINY), "dataset": str(TRAIN)} | ({"max_steps": 6} if args.quick else {})
        ).model_dump(mode="json")

        def run(side: str, attempt: int) -> None:
            work = scratch.root / f"{side}-{attempt}"
            figures = side_speed(
                side, spawn_child(__file__, side, spec | {"_work": str(work)}, scratch.env, work), WARMUP
            )
            speed[side].append(figures)
            print(f"{side} #{attempt + 1}: {figures['tokens_per_s']:.0f} tokens/s", flush=True)

        if args.part in ("both", "speed"):
            alternate(repeats, run, ("loradeck", "stock"))
        if args.part in ("both", "calibration"):
            os.environ.update({k: v for k, v in scratch.env.items() if k in ("LORADECK_DATA_DIR", "REDIS_URL")})
            from app.db import migrate

            migrate()
            calibrated = calibration(seeds, args.quick)
    finally:
        scratch.close()
    command = ".venv/bin/python bench/grpo.py" + (" --quick" if args.quick else "")
    suffix = "-quick" if args.quick else ""
    if args.part in ("both", "speed"):
        figures = {"speed": speed_figures(speed, spec)}
        speed_command = command + ("" if args.quick else f" --repeats {repeats}") + " --part speed"
        write_result(f"grpo-speed{suffix}", speed_command, figures)
        publish("grpo-speed", report_speed(speed_command, figures["speed"]), quick=args.quick)
    if args.part in ("both", "calibration"):
        calibration_command = command + f" --part calibration --seeds {args.seeds}"
        write_result(f"grpo-calibration{suffix}", calibration_command, {"calibration": calibrated})
        path = RESULTS_DIR / "grpo-tries.json"
        tried = json.loads(path.read_text(encoding="utf-8"))["tries"] if path.exists() else []
        publish("grpo-calibration", report_calibration(calibration_command, calibrated, tried), quick=args.quick)


def republish() -> None:
    """The README sections again from the recorded results (after a change to the tables' wording)."""
    speed = json.loads((RESULTS_DIR / "grpo-speed.json").read_text(encoding="utf-8"))
    publish("grpo-speed", report_speed(speed["command"], speed["speed"]), quick=False)
    calibrated = json.loads((RESULTS_DIR / "grpo-calibration.json").read_text(encoding="utf-8"))
    tried = json.loads((RESULTS_DIR / "grpo-tries.json").read_text(encoding="utf-8"))["tries"]
    table = report_calibration(calibrated["command"], calibrated["calibration"], tried)
    publish("grpo-calibration", table, quick=False)


if __name__ == "__main__":
    main()
