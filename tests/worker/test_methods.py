"""Every PEFT method and RunSpec knob: real runs of the tiny model, and each knob reaching its object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, PromptTuningInit
from pydantic import ValidationError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    TrainerCallback,
)

from app.config import TINY_MODEL_DIR, get_settings
from app.models import RunStatus
from app.rundir import RunDir
from tests.worker.conftest import TRAIN, run_spec, train_points, train_run
from worker.data.encode import PackedRowsCollator, PadCollator, make_collator
from worker.engine.configs import peft_config, quantization_config, training_arguments, training_callbacks
from worker.engine.steps import TrainingSetup, apply_adapter, build_trainer, load_model
from worker.errors import RunError

ON_CPU = not torch.cuda.is_available()


@pytest.fixture
def reordered(tmp_path: Path) -> Path:
    """16 rows whose JSON answers list the fields last to first. The tiny base writes them first to last,
    so every method has something to learn that it can learn in a few steps (the digits of the sample
    rows are random, which leaves little to learn in 12 steps)."""
    path = tmp_path / "reordered.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for line in TRAIN.read_text(encoding="utf-8").splitlines()[:16]:
            row = json.loads(line)
            fields = list(json.loads(row["completion"]).items())
            completion = json.dumps(dict(reversed(fields)), ensure_ascii=False, separators=(",", ":"))
            out.write(json.dumps({"prompt": row["prompt"], "completion": completion}, ensure_ascii=False) + "\n")
    return path


METHODS = {
    "lora": {"method": "lora", "learning_rate": 1e-2},
    "qlora-nf4-double-quant": {"method": "qlora", "learning_rate": 1e-2},
    "lora-8bit": {"method": "lora", "quantization": "8bit", "learning_rate": 1e-2},
    "dora": {"method": "lora", "use_dora": True, "learning_rate": 1e-2},
    "rslora": {"method": "lora", "use_rslora": True, "r": 16, "learning_rate": 2e-3},
    "lora-lm_head-saved": {"method": "lora", "modules_to_save": ["lm_head"], "learning_rate": 5e-3},
    "lora-gradient-checkpointing": {"method": "lora", "gradient_checkpointing": True, "learning_rate": 1e-2},
    "ia3": {"method": "ia3", "learning_rate": 3e-2},
    "prompt_tuning": {"method": "prompt_tuning", "prompt_tuning_init_text": "解析地址", "learning_rate": 3e-2},
}


@pytest.mark.parametrize("overrides", METHODS.values(), ids=METHODS.keys())
def test_each_method_learns_and_saves_an_adapter_stock_peft_loads(
    overrides: dict[str, Any], reordered: Path, loradeck_env: dict[str, str]
) -> None:
    spec = run_spec(dataset=str(reordered), max_steps=12, per_device_train_batch_size=4, max_seq_length=96, **overrides)

    run = train_run(spec)

    losses = [point.loss for point in train_points(run.id)]
    assert run.status == RunStatus.succeeded, run.error
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, f"loss did not go down: {first:.3f} -> {last:.3f}"

    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits[:, -1]
        tuned = PeftModel.from_pretrained(base, str(get_settings().runs_dir / run.id / "adapter")).eval()
        # Prompt tuning returns logits for the virtual tokens too; the last position is the input's last.
        assert (tuned(input_ids=ids).logits[:, -1] - base_logits).abs().max() > 1e-4
    config = tuned.peft_config["default"]
    assert (
        config.peft_type
        == {"lora": "LORA", "qlora": "LORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}[spec.method]
    )
    for knob in ("use_dora", "use_rslora", "num_virtual_tokens", "prompt_tuning_init_text"):
        if knob in overrides:
            assert getattr(config, knob) == overrides[knob]
    if spec.modules_to_save:
        assert set(config.modules_to_save) == {"lm_head"}


def test_lora_knobs_reach_the_lora_config() -> None:
    spec = run_spec(
        method="lora",
        r=32,
        lora_alpha=64,
        lora_dropout=0.1,
        target_modules="q_proj, v_proj",
        use_dora=True,
        use_rslora=True,
        bias="lora_only",
        modules_to_save=["lm_head", "embed_tokens"],
    )
    config = peft_config(spec, model_type="llama")
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (32, 64, 0.1)
    assert config.target_modules == {"q_proj", "v_proj"}
    assert (config.use_dora, config.use_rslora, config.bias) == (True, True, "lora_only")
    assert config.modules_to_save == ["lm_head", "embed_tokens"]
    assert config.task_type == "CAUSAL_LM"
    # all-linear goes to PEFT as its string shorthand, not as a module called "all-linear".
    assert peft_config(run_spec(method="qlora"), model_type="llama").target_modules == "all-linear"


def test_ia3_takes_peft_defaults_for_the_architecture_or_the_named_modules() -> None:
    default = peft_config(run_spec(method="ia3", modules_to_save=["lm_head"]), model_type="llama")
    assert isinstance(default, IA3Config)
    assert default.target_modules == {"k_proj", "v_proj", "down_proj"}  # PEFT's (IA)³ choice for llama
    assert default.feedforward_modules == {"down_proj"}
    assert default.modules_to_save == ["lm_head"]

    # Where PEFT has no defaults it refuses (IA)³ without feedforward_modules; so does loradeck, naming the field.
    with pytest.raises(RunError, match="^feedforward_modules: PEFT has no default .* model type some-new-arch"):
        peft_config(run_spec(method="ia3"), model_type="some-new-arch")
    named_new = peft_config(run_spec(method="ia3", feedforward_modules=["down_proj"]), model_type="some-new-arch")
    assert (named_new.target_modules, named_new.feedforward_modules) == ("all-linear", {"down_proj"})

    named = peft_config(
        run_spec(method="ia3", target_modules=["q_proj", "up_proj"], feedforward_modules=["up_proj"]),
        model_type="llama",
    )
    assert (named.target_modules, named.feedforward_modules) == ({"q_proj", "up_proj"}, {"up_proj"})
    only_targets = peft_config(run_spec(method="ia3", target_modules=["v_proj", "down_proj"]), model_type="llama")
    assert only_targets.feedforward_modules == {"down_proj"}  # PEFT's feed-forward modules among the targets


def test_prompt_tuning_starts_from_the_init_text_or_at_random() -> None:
    text = peft_config(
        run_spec(method="prompt_tuning", num_virtual_tokens=24, prompt_tuning_init_text="解析地址"), model_type="llama"
    )
    assert isinstance(text, PromptTuningConfig)
    assert (text.num_virtual_tokens, text.prompt_tuning_init) == (24, PromptTuningInit.TEXT)
    assert (text.prompt_tuning_init_text, text.tokenizer_name_or_path) == ("解析地址", str(TINY_MODEL_DIR))
    random = peft_config(run_spec(method="prompt_tuning", num_virtual_tokens=8), model_type="llama")
    assert (random.num_virtual_tokens, random.prompt_tuning_init) == (8, PromptTuningInit.RANDOM)


def test_quantization_knobs_reach_the_bitsandbytes_config() -> None:
    qlora = quantization_config(run_spec(method="qlora"))
    assert qlora is not None and qlora.load_in_4bit and not qlora.load_in_8bit
    assert (qlora.bnb_4bit_quant_type, qlora.bnb_4bit_use_double_quant) == ("nf4", True)
    if ON_CPU:
        assert qlora.bnb_4bit_compute_dtype == torch.float32  # auto: bfloat16 only on a GPU that has it

    fp4 = quantization_config(
        run_spec(
            method="qlora",
            bnb_4bit_quant_type="fp4",
            bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype="bfloat16",
        )
    )
    assert fp4 is not None
    assert (fp4.bnb_4bit_quant_type, fp4.bnb_4bit_use_double_quant, fp4.bnb_4bit_compute_dtype) == (
        "fp4",
        False,
        torch.bfloat16,
    )
    eight = quantization_config(run_spec(method="lora", quantization="8bit"))
    assert eight is not None and eight.load_in_8bit and not eight.load_in_4bit
    ia3_4bit = quantization_config(run_spec(method="ia3", quantization="4bit"))
    assert ia3_4bit is not None and ia3_4bit.load_in_4bit
    assert quantization_config(run_spec(method="lora")) is None
    assert quantization_config(run_spec(method="prompt_tuning", quantization="auto")) is None


def test_training_knobs_reach_the_training_arguments(tmp_path: Path) -> None:
    spec = run_spec(
        method="lora",
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
        max_steps=50,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        optim="adamw_8bit",
        weight_decay=0.01,
        max_grad_norm=0.5,
        gradient_checkpointing=True,
        precision="fp32",
        logging_steps=5,
        seed=7,
        eval_split=0.1,
        eval_steps=10,
        early_stopping_patience=3,
        save_steps=20,
        save_total_limit=4,
    )
    args = training_arguments(spec, RunDir(run_id="r", root=tmp_path / "run", runs_dir=tmp_path).checkpoints_dir)
    assert args.output_dir == str(tmp_path / "run" / "checkpoints")
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps) == (3e-4, "cosine", 5)
    assert (args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (50, 2, 4)
    assert (args.optim, args.weight_decay, args.max_grad_norm) == ("adamw_8bit", 0.01, 0.5)
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (args.bf16, args.fp16) == (False, False)
    assert (args.seed, args.data_seed, args.logging_steps) == (7, 7, 5)
    assert (args.eval_strategy, args.eval_steps) == ("steps", 10)
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 20, 4)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False
    (early,) = training_callbacks(spec)
    assert isinstance(early, EarlyStoppingCallback) and early.early_stopping_patience == 3

    epochs = training_arguments(run_spec(method="lora", max_steps=-1, num_train_epochs=2.5, warmup_ratio=0.2), tmp_path)
    assert (epochs.max_steps, epochs.num_train_epochs, epochs.warmup_steps) == (-1, 2.5, 0.2)  # a share of the steps
    quiet = training_arguments(run_spec(method="lora", save_steps=0), tmp_path)
    assert (quiet.eval_strategy, quiet.save_strategy, quiet.load_best_model_at_end) == ("no", "no", False)
    assert training_callbacks(run_spec(method="lora")) == []


def test_eval_steps_auto_evaluates_five_times_and_fits_early_stopping(tmp_path: Path) -> None:
    # With eval data and no eval_steps: every max_steps / 5 steps, rounded up; an explicit number wins; 0: the end.
    assert training_arguments(run_spec(method="lora", eval_split=0.1), tmp_path).eval_steps == 12
    assert training_arguments(run_spec(method="lora", eval_split=0.1, max_steps=7), tmp_path).eval_steps == 2
    assert training_arguments(run_spec(method="lora", eval_split=0.1, eval_steps=7), tmp_path).eval_steps == 7
    at_the_end = training_arguments(run_spec(method="lora", eval_split=0.1, eval_steps=0), tmp_path)
    assert (at_the_end.eval_strategy, at_the_end.batch_eval_metrics) == ("no", True)  # evaluated once, after
    # A run of epochs: Trainer works out a fifth of the steps it counts.
    epochs = training_arguments(run_spec(method="lora", eval_split=0.1, max_steps=-1), tmp_path)
    assert (epochs.eval_strategy, epochs.eval_steps) == ("steps", 0.2)
    # No eval data: nothing to evaluate, auto or not.
    assert training_arguments(run_spec(method="lora"), tmp_path).eval_strategy == "no"
    # Early stopping on the auto evaluations, its checkpoints on them: the best one is kept.
    spec = run_spec(method="lora", eval_split=0.1, early_stopping_patience=2, save_steps=24)
    early = training_arguments(spec, tmp_path)
    assert (early.eval_steps, early.save_steps, early.load_best_model_at_end) == (12, 24, True)


def test_the_trainer_gets_the_collator_and_the_callbacks(tmp_path: Path, loradeck_env: dict[str, str]) -> None:
    spec = run_spec(method="lora", packing=True, eval_split=0.1, eval_steps=5, save_steps=5, early_stopping_patience=2)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert isinstance(make_collator(run_spec(method="lora"), tokenizer), PadCollator)
    model = apply_adapter(load_model(spec), spec)
    args = training_arguments(spec, tmp_path)
    setup = TrainingSetup(args=args, tokenizer=tokenizer, train_data=[], eval_data=[], model=model)
    trainer = build_trainer(setup, spec, TrainerCallback())
    # sdpa here (the engine's default): bounded rows; one flattened row only under flash attention.
    assert isinstance(trainer.data_collator, PackedRowsCollator)
    (early,) = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)]
    assert early.early_stopping_patience == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"method": "qlora", "quantization": "8bit"}, "quantization"),
        ({"method": "lora", "early_stopping_patience": 2, "eval_split": 0.1}, "early_stopping_patience"),
        ({"method": "ia3", "use_dora": True}, "use_dora"),
        ({"method": "lora", "feedforward_modules": ["down_proj"]}, "feedforward_modules"),
        ({"method": "lora", "r": 0}, "r"),
        ({"method": "lora", "optim": "adagrad"}, "optim"),
    ],
)
def test_bad_values_are_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        run_spec(**overrides)
    assert field in str(refused.value)


@pytest.mark.skipif(not ON_CPU, reason="a GPU can train in bf16")
def test_half_precision_on_a_cpu_is_refused_naming_precision(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    for precision in ("bf16", "fp16"):
        with pytest.raises(RunError, match=f"^precision: {precision} mixed precision needs a GPU"):
            training_arguments(run_spec(method="lora", precision=precision), tmp_path)

    run = train_run(run_spec(method="lora", precision="bf16"))
    assert run.status == RunStatus.failed
    assert run.error.startswith("precision: bf16 mixed precision needs a GPU and this worker has none; set precision")


def test_an_unknown_module_to_save_fails_the_run_naming_the_field(loradeck_env: dict[str, str]) -> None:
    run = train_run(run_spec(method="lora", modules_to_save=["score"]))
    assert run.status == RunStatus.failed
    assert run.error.startswith("modules_to_save: score not found in LlamaForCausalLM; its adaptable modules are:")
    assert "lm_head" in run.error
