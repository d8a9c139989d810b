"""RunSpec -> the objects that do the work: PEFT config, bitsandbytes config, TrainingArguments, callbacks.

The config builders are pure (a spec in, a config out; only `resolve_precision` asks torch which device
there is), so a test can check that every knob reaches its object without loading a model or training.
`check_module_names` reads the base model's config.json to refuse unknown module names early.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
from peft import IA3Config, LoraConfig, PeftConfig, PromptTuningConfig, PromptTuningInit
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    EarlyStoppingCallback,
    TrainerCallback,
    TrainingArguments,
)

from app.config import get_settings
from app.errors import InvalidInput
from app.peft_defaults import ia3_feedforward_refusal
from app.preflight import check_inputs, stored_spec
from app.schemas import AUTO_EVALUATIONS, RunSpec
from worker.data.hub import model_source
from worker.errors import RunError

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"
Precision = Literal["bf16", "fp16", "fp32"]


def read_spec(raw_spec: dict[str, Any]) -> RunSpec:
    """A stored spec in its shape (app.preflight.stored_spec); RunError names what no longer reads."""
    try:
        return stored_spec(raw_spec)
    except InvalidInput as exc:
        raise RunError(str(exc)) from None


def claimed_spec(raw_spec: dict[str, Any], *, enforce_roots: bool) -> RunSpec:
    """A stored spec as a worker about to train it takes it: its shape, then the pre-flight check of its inputs
    again (a file can go while the run waits), whose failure ends the run with its reason."""
    try:
        return check_inputs(read_spec(raw_spec), get_settings(), enforce_roots=enforce_roots)
    except InvalidInput as exc:
        raise RunError(str(exc)) from None


def quantization_mode(spec: RunSpec) -> Literal["none", "8bit", "4bit"]:
    if spec.quantization == "auto":
        return "4bit" if spec.method == "qlora" else "none"
    return spec.quantization


def _bf16_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(spec: RunSpec) -> torch.dtype:
    """The dtype quantized layers compute in; auto: bfloat16 on a GPU that has it, else float32."""
    if spec.bnb_4bit_compute_dtype == "auto":
        return torch.bfloat16 if _bf16_gpu() else torch.float32
    return getattr(torch, spec.bnb_4bit_compute_dtype)  # type: ignore[no-any-return]


def resolve_precision(spec: RunSpec) -> Precision:
    """bf16/fp16 mixed precision, or fp32. Refused where the device cannot do it, naming `precision`."""
    if spec.precision == "auto":
        return "bf16" if _bf16_gpu() else "fp32"
    if spec.precision == "fp32":
        return "fp32"
    if not torch.cuda.is_available():
        # Trainer's own refusal ("Your setup doesn't support bf16/gpu") does not say which setting to change,
        # and fp16 autocast on a CPU is slower than fp32 there anyway.
        raise RunError(
            f"precision: {spec.precision} mixed precision needs a GPU and this worker has none; "
            "set precision to auto or fp32"
        )
    if spec.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RunError("precision: this GPU has no bfloat16 support (it needs Ampere or newer); use fp16 or auto")
    return spec.precision


def model_dtype(spec: RunSpec) -> torch.dtype:
    """The dtype the frozen base is loaded in (quantized layers aside)."""
    if quantization_mode(spec) != "none":
        return compute_dtype(spec)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolve_precision(spec)]


def quantization_config(spec: RunSpec) -> BitsAndBytesConfig | None:
    mode = quantization_mode(spec)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=spec.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=compute_dtype(spec),
        )
    return None


def _targets(spec: RunSpec) -> str | list[str]:
    # PEFT takes all-linear only as a plain string; in a list it would look for a module of that name.
    return ALL_LINEAR if spec.target_modules == [ALL_LINEAR] else list(spec.target_modules)


def peft_config(spec: RunSpec, *, model_type: str) -> PeftConfig:
    """The PEFT config of the spec's method; `model_type` (config.json's) picks (IA)³'s defaults."""
    modules_to_save = list(spec.modules_to_save) or None
    if spec.method in ("lora", "qlora"):
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=spec.r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=_targets(spec),
            use_dora=spec.use_dora,
            use_rslora=spec.use_rslora,
            bias=spec.bias,
            modules_to_save=modules_to_save,
        )
    if spec.method == "ia3":
        target_modules, feedforward_modules = ia3_modules(spec, model_type=model_type)
        return IA3Config(
            task_type="CAUSAL_LM",
            target_modules=target_modules,
            feedforward_modules=feedforward_modules,
            modules_to_save=modules_to_save,
        )
    if spec.method == "prompt_tuning":
        text = spec.prompt_tuning_init_text
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=spec.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text or None,
            tokenizer_name_or_path=model_source(spec.base_model) if text else None,
            tokenizer_kwargs={"trust_remote_code": get_settings().allow_trust_remote_code} if text else None,
            modules_to_save=modules_to_save,
        )
    raise RunError(f"method: {spec.method} is not one of lora, qlora, ia3, prompt_tuning")


def ia3_modules(spec: RunSpec, *, model_type: str) -> tuple[str | list[str], list[str]]:
    """(IA)³'s target and feed-forward modules.

    The default target_modules (all-linear) with no feedforward_modules means "PEFT's choice": for the
    architectures PEFT knows (llama: k_proj, v_proj, down_proj; down_proj feed-forward), the modules the
    (IA)³ paper scales. Named target_modules with no feedforward_modules take PEFT's feed-forward ones among
    them. Where PEFT has no defaults (Phi-3), feedforward_modules must be named, as PEFT requires.
    """
    if spec.feedforward_modules:
        return _targets(spec), list(spec.feedforward_modules)
    known_targets = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
    known_feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type)
    if known_feedforward is None:
        raise RunError(ia3_feedforward_refusal(model_type))  # PEFT's own refusal, naming the field to set
    if spec.target_modules == [ALL_LINEAR]:
        if not known_targets:
            return ALL_LINEAR, []
        return list(known_targets), [name for name in known_feedforward if name in known_targets]
    return list(spec.target_modules), [name for name in known_feedforward if name in spec.target_modules]


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the layers LoRA can adapt (linear, embedding, conv), e.g. q_proj, v_proj."""
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D")
        }
    )


def check_module_names(spec: RunSpec) -> None:
    """Refuse unknown module names before any weight is read: the model's skeleton is enough to tell."""
    fields: dict[str, list[str]] = {}
    if spec.method != "prompt_tuning":  # prompt tuning adapts no module, so it ignores target_modules
        fields = {"target_modules": spec.target_modules, "feedforward_modules": spec.feedforward_modules}
    fields["modules_to_save"] = spec.modules_to_save
    named = {field: [n for n in names if n != "all-linear"] for field, names in fields.items()}
    if not any(named.values()):
        return
    trust = get_settings().allow_trust_remote_code
    config = AutoConfig.from_pretrained(model_source(spec.base_model), trust_remote_code=trust)
    try:
        with torch.device("meta"):  # no memory, no init: a 70B skeleton builds in a second
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    except Exception as exc:  # some architectures cannot build on meta; get_peft_model checks again later
        log.info("module names not checked before loading (%s)", exc)
        return
    modules = [name for name, _ in model.named_modules()]
    for field, names in named.items():
        # PEFT matches a name against the end of each module's dotted name.
        missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in modules)]
        if missing:
            raise RunError(
                f"{field}: {', '.join(missing)} not found in {type(model).__name__}; "
                f"its adaptable modules are: {', '.join(adaptable_module_names(model))}"
                + (" (or use all-linear)" if field == "target_modules" else "")
            )


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> TrainingArguments:
    """TrainingArguments for the spec; checkpoints go to `checkpoints_dir` in Trainer's own format (RunDir's)."""
    return TrainingArguments(**training_kwargs(spec, checkpoints_dir))


def training_kwargs(spec: RunSpec, checkpoints_dir: Path) -> dict[str, Any]:
    """The spec's TrainingArguments as keywords: every objective's config (TRL's DPOConfig, ...) is a subclass of
    TrainingArguments and starts from them, so precision, optimizer, schedule, checkpoints and logging agree."""
    precision = resolve_precision(spec)
    has_eval = bool(spec.eval_dataset or spec.eval_split)
    # auto follows the run's length; with max_steps -1 Trainer works it out, so it gets the share of the steps.
    auto_share = 1 / AUTO_EVALUATIONS if spec.eval_steps == "auto" and spec.max_steps == -1 else None
    every: float = auto_share or spec.eval_every()
    evaluating = has_eval and every > 0
    early_stopping = spec.early_stopping_patience > 0
    checkpointing = spec.gradient_checkpointing == "on"
    return dict(
        output_dir=str(checkpoints_dir),
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler_type,
        warmup_steps=warmup_steps(spec),
        num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.per_device_train_batch_size,
        per_device_eval_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        optim=spec.optim,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns).
        # Non-reentrant checkpointing works with a frozen base whose inputs need no grad (PEFT's case).
        # The switches arrive resolved (worker.engine.fastpaths): "on" is on; an unresolved auto stays off.
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        use_liger_kernel=spec.liger_kernel == "on",
        torch_compile=spec.torch_compile == "on",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=spec.logging_steps,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=every if evaluating else None,
        # Token accuracy is counted batch by batch (worker.engine.token_accuracy), never from the whole set.
        batch_eval_metrics=has_eval,
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,  # read only with save_strategy "steps"; must still be positive
        save_total_limit=spec.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        # Early stopping's patience counter is kept in the checkpoint, so a resumed run keeps counting.
        restore_callback_states_from_checkpoint=True,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=True,  # progress goes to the run's events; the CLI draws its own bar from them
        include_num_input_tokens_seen="non_padding",
    )


def warmup_steps(spec: RunSpec) -> int | float:
    # transformers 5 dropped warmup_ratio: warmup_steps below 1 is read as a share of the steps, 1 or more
    # as a count. A count when max_steps is known (exact, and 1.0 stays "all steps"), else the share.
    if spec.max_steps > 0:
        return math.ceil(spec.max_steps * spec.warmup_ratio)
    return min(spec.warmup_ratio, 1 - 1e-9)


def training_callbacks(spec: RunSpec) -> list[TrainerCallback]:
    if spec.early_stopping_patience:
        return [EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience)]
    return []


def vllm_lora_incompatibility(adapter_config: dict[str, Any]) -> str | None:
    """Why vLLM could not serve this adapter as a LoRA on the base (the merged model it can always serve)."""
    if adapter_config.get("peft_type") != "LORA":
        return f"vLLM serves LoRA adapters only, not {adapter_config.get('peft_type')}"
    if adapter_config.get("modules_to_save"):
        return (
            f"it trains whole modules ({', '.join(adapter_config['modules_to_save'])} in modules_to_save), "
            "which vLLM's LoRA loading cannot apply"
        )
    if adapter_config.get("use_dora"):
        return "vLLM's LoRA serving does not implement DoRA"
    return None
