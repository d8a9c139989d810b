"""Measure a recipe for the bundled tiny model on the sample task in chat form: what `assets/tiny-llama/recipe.json`
records, and what a fine-tuning job with `auto` hyperparameters trains with (app/services/openai_auto.py).

    nice python -m tools.tiny_recipe --work /tmp/recipe --epochs 2 --batch 16 --lr 3e-3

The sample's rows become conversations as an OpenAI chat file holds them (a system turn, the prompt as the user
turn, the completion as the assistant turn); `loradeck train` trains the recipe on all train rows, then the
adapter answers the held-out eval rows greedily through the model's chat template and each answer is checked for
an exact match. Prints one JSON line: the recipe, wall and CPU seconds of the training process, exact matches.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "datasets" / "tw-address"
MODEL = REPO / "assets" / "tiny-llama"
SYSTEM = "Parse the address into JSON."


def chat_row(row: dict[str, str]) -> dict[str, Any]:
    turns = [("system", SYSTEM), ("user", row["prompt"]), ("assistant", row["completion"])]
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def write_chat_files(work: Path) -> None:
    for name in ("train", "eval"):
        rows = [json.loads(line) for line in (SAMPLE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        text = "".join(json.dumps(chat_row(row), ensure_ascii=False) + "\n" for row in rows)
        (work / f"{name}_chat.jsonl").write_text(text, encoding="utf-8")


def train(work: Path, recipe: dict[str, Any]) -> tuple[Path, float, float]:
    """(the run's directory, wall seconds, CPU seconds) of `loradeck train` on the recipe."""
    spec = {
        "base_model": str(MODEL), "dataset": str(work / "train_chat.jsonl"), "task_eval_rows": 0,
        "regression_prompts": [], "save_steps": 0, "logging_steps": 10, **recipe,
    }  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))
    env = os.environ | {"LORADECK_DATA_DIR": str(work / "data"), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "train", str(work / "spec.json")],
        env=env, capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(line for line in done.stdout.splitlines() if line.startswith("run "))
    return Path(line.split(": ", 1)[1]), wall, usage.ru_utime + usage.ru_stime


def exact_matches(work: Path, run_dir: Path, rows: int) -> int:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.serving.conversation import conversation_ids
    from worker.serving.decoding import generate_completions

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(MODEL), run_dir / "adapter")
    held_out = [json.loads(line) for line in (work / "eval_chat.jsonl").read_text(encoding="utf-8").splitlines()]
    held_out = held_out[:rows]
    prompts = [conversation_ids(tokenizer, "auto", row["messages"][:2]) for row in held_out]
    answers = generate_completions(model, tokenizer, prompts, max_new_tokens=80)
    return sum(a.strip() == row["messages"][2]["content"].strip() for a, row in zip(answers, held_out, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a folder for the chat files and the run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rows", type=int, default=200, help="held-out rows to answer")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    write_chat_files(args.work)
    train_rows = len((SAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines())
    recipe = {
        "method": "lora", "quantization": "none", "r": args.rank, "lora_alpha": 2 * args.rank, "lora_dropout": 0.0,
        "learning_rate": args.lr, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
        "per_device_train_batch_size": args.batch, "max_steps": -(-train_rows * args.epochs // args.batch),
    }  # fmt: skip
    run_dir, wall, cpu = train(args.work, recipe)
    exact = exact_matches(args.work, run_dir, args.rows)
    print(json.dumps({"recipe": recipe, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "exact": exact,
                      "of": args.rows}))  # fmt: skip


if __name__ == "__main__":
    main()
