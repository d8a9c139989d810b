"""The bare-script baseline the training benchmarks compare loradeck's engine with: transformers + peft +
bitsandbytes alone, as a user would write it, for the same RunSpec, data and seed.

    .venv/bin/python bench/bare.py SPEC.json --result OUT.json [--output-dir DIR]

SPEC.json is a RunSpec dumped as JSON (`RunSpec.model_dump(mode="json")`); this script reads the plain
dict and imports nothing of loradeck's, so a fresh process of it pays only for Python, torch,
transformers and peft. It loads the base (4-bit NF4 with double quantization through BitsAndBytesConfig
for qlora, then prepare_model_for_kbit_training), wraps it with get_peft_model and the same LoraConfig,
tokenizes the prompt/completion rows as loradeck does (bos + prompt, masked; completion + eos, learned;
cut to max_seq_length), and trains with Trainer and the TrainingArguments values loradeck derives from
the spec, report_to none and none of loradeck's callbacks.

What it measures (the training benchmarks read the same figures off loradeck's metric points):

- `points`: one per logged step, with seconds since `on_train_begin`, the non-padding tokens trained so
  far (Trainer's own count, `include_num_input_tokens_seen="non_padding"`, as loradeck sets it) and the
  loss. A one-line probe callback notes the time; it stands for loradeck's metric callback, which also
  takes its `time` when Trainer logs.
- `train_s`: the wall time of `trainer.train()` (model loading excluded).
- `first_step_at`: the wall-clock time (time.time()) of the first logged step; a caller that spawned
  this script subtracts its own spawn time to get "process start to first logged step".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
ALL_LINEAR = "all-linear"


def _bf16_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _precision(spec: dict[str, Any]) -> str:
    # RunSpec's "auto": bf16 mixed precision on a GPU that has it, else fp32 (a user script would hardcode it).
    if spec["precision"] == "auto":
        return "bf16" if _bf16_gpu() else "fp32"
    return str(spec["precision"])


def _load_model(spec: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = spec["quantization"]
    if quantization == "auto":
        quantization = "4bit" if spec["method"] == "qlora" else "none"
    if spec["bnb_4bit_compute_dtype"] == "auto":
        compute = torch.bfloat16 if _bf16_gpu() else torch.float32
    else:
        compute = getattr(torch, spec["bnb_4bit_compute_dtype"])
    bnb = None
    if quantization == "4bit":
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec["bnb_4bit_quant_type"],
            bnb_4bit_use_double_quant=spec["bnb_4bit_use_double_quant"],
            bnb_4bit_compute_dtype=compute,
        )
    elif quantization == "8bit":
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    dtype = (
        compute
        if bnb is not None
        else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_precision(spec), torch.float32)
    )
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        spec["base_model"], device_map={"": device}, dtype=dtype, quantization_config=bnb, use_safetensors=True
    )
    model.config.use_cache = False
    return model


def _adapt(model: Any, spec: dict[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec["method"] not in ("lora", "qlora"):
        raise SystemExit(f"bench/bare.py trains lora and qlora only, not {spec['method']}")
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec["gradient_checkpointing"] == "on",
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = spec["target_modules"]
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else list(targets),
        use_dora=spec["use_dora"],
        use_rslora=spec["use_rslora"],
        bias=spec["bias"],
        modules_to_save=list(spec["modules_to_save"]) or None,
    )
    return get_peft_model(model, config)


def tokenize_rows(path: str | Path, tokenizer: Any, max_seq_length: int) -> list[dict[str, list[int]]]:
    """prompt/completion rows: bos + prompt (labels masked), then completion + eos (learned); text rows learn
    every token. Cut to max_seq_length; rows left with nothing to learn are dropped."""
    examples = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" in row:
            ids = [*bos, *tokenizer(row["text"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            labels = list(ids)
        else:
            prompt = bos + tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            completion = [*tokenizer(row["completion"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            ids, labels = prompt + completion, [IGNORE_INDEX] * len(prompt) + completion
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if any(label != IGNORE_INDEX for label in labels):
            examples.append({"input_ids": ids, "labels": labels})
    return examples


def pad_collator(pad_token_id: int) -> Any:
    import torch

    def collate(features: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    return collate


def training_arguments(spec: dict[str, Any], output_dir: Path) -> Any:
    """The TrainingArguments values loradeck's worker/engine/configs.py derives from the same spec."""
    import torch
    from transformers import TrainingArguments

    precision = _precision(spec)
    max_steps = spec["max_steps"]
    warmup = math.ceil(max_steps * spec["warmup_ratio"]) if max_steps > 0 else min(spec["warmup_ratio"], 1 - 1e-9)
    checkpointing = spec["gradient_checkpointing"] == "on"
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=spec["learning_rate"],
        lr_scheduler_type=spec["lr_scheduler_type"],
        warmup_steps=warmup,
        num_train_epochs=spec["num_train_epochs"],
        max_steps=max_steps,
        per_device_train_batch_size=spec["per_device_train_batch_size"],
        gradient_accumulation_steps=spec["gradient_accumulation_steps"],
        optim=spec["optim"],
        weight_decay=spec["weight_decay"],
        max_grad_norm=spec["max_grad_norm"],
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=spec["seed"],
        data_seed=spec["seed"],
        logging_steps=spec["logging_steps"],
        logging_nan_inf_filter=False,
        save_strategy="steps" if spec["save_steps"] else "no",
        save_steps=spec["save_steps"] or 500,
        save_total_limit=spec["save_total_limit"],
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )


def train(spec: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Load, adapt, tokenize and train as a bare script would; the figures the benchmarks compare."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithFlattening, PrinterCallback, Trainer, TrainerCallback
    from transformers import set_seed as seed_everything

    points: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    class Probe(TrainerCallback):  # the benchmark's stopwatch, not a feature
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["begin"] = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                now = time.monotonic()
                clock.setdefault("first_step_at", time.time())
                points.append(
                    {
                        "step": state.global_step,
                        "time": now - clock["begin"],
                        "tokens_seen": state.num_input_tokens_seen,
                        "loss": float(logs["loss"]),
                    }
                )

    loading = time.perf_counter()
    seed_everything(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = tokenize_rows(spec["dataset"], tokenizer, spec["max_seq_length"])
    model = _adapt(_load_model(spec), spec)
    if spec["packing"] == "on":
        collator: Any = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    else:
        collator = pad_collator(int(tokenizer.pad_token_id))
    trainer = Trainer(
        model=model,
        args=training_arguments(spec, output_dir),
        train_dataset=rows,  # type: ignore[arg-type]
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[Probe()],
    )
    trainer.remove_callback(PrinterCallback)  # a dict printed per step; loradeck removes it too
    load_s = time.perf_counter() - loading
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "side": "bare",
        "load_s": load_s,
        "train_s": train_s,
        "train_cpu_s": cpu_s,
        "tokens": tokens,
        "steps": trainer.state.global_step,
        "tokens_per_s": tokens / train_s,
        "first_step_at": clock.get("first_step_at"),
        "final_loss": points[-1]["loss"] if points else None,
        "points": points,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="a RunSpec as JSON (RunSpec.model_dump(mode='json'))")
    parser.add_argument("--result", type=Path, required=True, help="where to write the figures as JSON")
    parser.add_argument("--output-dir", type=Path, help="Trainer's output_dir; default: next to --result")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads crawl on shared cores
    spec = json.loads(args.spec.read_text())
    result = train(spec, args.output_dir or args.result.with_suffix(".out"))
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
