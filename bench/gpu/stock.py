"""The stock sides of the GPU benchmark, each run in its own process: TRL's `SFTTrainer` as its docs show it
(a prompt/completion dataset, a `LoraConfig` passed as `peft_config`), and Unsloth's `FastLanguageModel` with
the same SFTTrainer, for the same RunSpec, rows and seed as the bare script and loradeck's engine.

    python bench/gpu/stock.py trl|unsloth SPEC.json --result OUT.json

It imports nothing of loradeck's (bench/bare.py's loaders aside, which import none either) and writes the
figures bench/bare.py writes: `points` (one per logged step: seconds since on_train_begin, non-padding tokens
so far, loss), `train_s`, `tokens`, `final_loss`, `peak_gpu_bytes` (torch.cuda.max_memory_allocated() over
`trainer.train()`, reset after loading).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_config(spec: dict[str, Any]) -> Any:
    from peft import LoraConfig

    targets = spec["target_modules"]
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias=spec["bias"],
    )


def _sft_config(spec: dict[str, Any], output_dir: Path) -> Any:
    from trl import SFTConfig

    from bench.bare import _precision

    precision = _precision(spec)
    steps, checkpointing = spec["max_steps"], spec["gradient_checkpointing"] == "on"
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=spec["per_device_train_batch_size"],
        gradient_accumulation_steps=spec["gradient_accumulation_steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type=spec["lr_scheduler_type"],
        warmup_steps=math.ceil(steps * spec["warmup_ratio"]),
        weight_decay=spec["weight_decay"],
        max_grad_norm=spec["max_grad_norm"],
        optim=spec["optim"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        max_length=spec["max_seq_length"],
        packing=spec["packing"] == "on",
        logging_steps=spec["logging_steps"],
        seed=spec["seed"],
        data_seed=spec["seed"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataset_num_proc=1,
        include_num_input_tokens_seen="non_padding",
    )


def train(side: str, spec: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    if side == "unsloth":
        import unsloth  # noqa: F401  # first, as its docs say: it patches transformers and peft on import
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from transformers import set_seed as seed_everything
    from trl import SFTTrainer

    from bench.bare import _bf16_gpu, _load_model

    points: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    class Probe(TrainerCallback):  # the benchmark's stopwatch, as bench/bare.py's
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["begin"] = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                points.append(
                    {
                        "step": state.global_step,
                        "time": time.monotonic() - clock["begin"],
                        "tokens_seen": state.num_input_tokens_seen,
                        "loss": float(logs["loss"]),
                    }
                )

    loading = time.perf_counter()
    seed_everything(spec["seed"])
    rows = load_dataset("json", data_files=spec["dataset"], split="train")
    peft_config = None
    if side == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=spec["base_model"],
            max_seq_length=spec["max_seq_length"],
            dtype=torch.bfloat16 if _bf16_gpu() else None,
            load_in_4bit=spec["method"] == "qlora",
            local_files_only=True,
        )
        targets = spec["target_modules"]
        model = FastLanguageModel.get_peft_model(
            model,
            r=spec["r"],
            lora_alpha=spec["lora_alpha"],
            lora_dropout=spec["lora_dropout"],
            target_modules=LINEAR if targets == ["all-linear"] else list(targets),
            bias=spec["bias"],
            use_gradient_checkpointing="unsloth" if spec["gradient_checkpointing"] == "on" else False,
            random_state=spec["seed"],
        )
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec["base_model"])
        model = _load_model(spec)  # 4-bit NF4 for qlora, as the bare script; SFTTrainer prepares it for k-bit
        peft_config = _lora_config(spec)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(spec, output_dir),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Probe()],
    )
    trainer.remove_callback(PrinterCallback)
    load_s = time.perf_counter() - loading
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "side": side,
        "load_s": load_s,
        "train_s": train_s,
        "tokens": tokens,
        "steps": trainer.state.global_step,
        "tokens_per_s": tokens / train_s,
        "final_loss": points[-1]["loss"] if points else None,
        "points": points,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # bench.common.spawn_child's convention: `--child SIDE SPEC RESULT`.
    parser.add_argument("--child", dest="side", required=True, choices=("trl", "unsloth"))
    parser.add_argument("spec", type=Path, help="a RunSpec as JSON (RunSpec.model_dump(mode='json'))")
    parser.add_argument("result", type=Path, help="where to write the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    spec = json.loads(args.spec.read_text())
    result = train(args.side, spec, args.result.with_suffix(".out"))
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
