"""RunSpec: everything a run is, in the shape it is stored in the database at creation.

RunSpec is pure: it looks at nothing outside itself, so a stored spec always reads back. Whether the files
it names exist and fit together is the pre-flight check's business (app.preflight), run at submit and again
when a worker claims the run.

Field names follow PEFT's `LoraConfig` / `IA3Config` / `PromptTuningConfig`, transformers'
`TrainingArguments` and `BitsAndBytesConfig`, so a spec reads like the code it configures. Every field
has a description (the form shows it as help text, the README documents it), and every rule between
fields lives in one validator below that names the fields in its message.
"""

from __future__ import annotations

import math
import re
import typing
import unicodedata
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.config import SAMPLE_DATASET_DIR, get_settings
from app.objectives import REGISTRY, ObjectiveFields, ObjectiveName, objectives_using

# Hugging Face's own rule for a repo id (huggingface_hub.utils.validate_repo_id), with the org required:
# word characters, '-' and '.', starting and ending with a word character, no '--' or '..', no '.git' end.
HUB_ID = re.compile(r"^\b[\w\-.]{1,96}\b/\b[\w\-.]{1,96}\b$", re.ASCII)
MODULE_NAME = re.compile(r"^[A-Za-z_][\w.]*$")
DATASET_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MIN_SEQ_LENGTH, MAX_SEQ_LENGTH = 8, 1_048_576  # max_seq_length's bounds, wherever a length is asked for
# What a GGUF export can write (worker.export): 16-bit, 8-bit and llama.cpp's 4-bit k-quants.
GgufType = Literal["f16", "bf16", "q8_0", "q4_k_m"]
GGUF_TYPES: tuple[str, ...] = typing.get_args(GgufType)
# A throughput switch (worker.engine.fastpaths resolves auto on the worker, with the reason, into on or off).
Switch = Literal["auto", "on", "off"]
FAST_PATH_FIELDS = ("packing", "gradient_checkpointing", "liger_kernel", "torch_compile")
AUTO_EVALUATIONS = 5  # evaluations over a run whose eval_steps is auto: enough for a curve, few enough to stay cheap


def is_hub_id(value: str) -> bool:
    return bool(HUB_ID.match(value)) and "--" not in value and ".." not in value and not value.endswith(".git")


SAMPLE_TRAIN, SAMPLE_EVAL = SAMPLE_DATASET_DIR / "train.jsonl", SAMPLE_DATASET_DIR / "eval.jsonl"
# The sample's preference pairs (for dpo, orpo, kto) and their held-out pairs.
SAMPLE_PAIRS, SAMPLE_PAIRS_EVAL = SAMPLE_DATASET_DIR / "preference.jsonl", SAMPLE_DATASET_DIR / "preference_eval.jsonl"
SAMPLE_EVALS = {SAMPLE_TRAIN: SAMPLE_EVAL, SAMPLE_PAIRS: SAMPLE_PAIRS_EVAL}  # each bundled training file's eval file
DEFAULT_EVAL_SPLIT = 0.1  # what the form proposes to hold out of a dataset that has no eval file


def with_default_eval(spec: RunSpec) -> RunSpec:
    """An API spec that says nothing of evaluation is scored on its dataset's own eval data, as the form's
    is: the sample's eval file for the sample. Other files keep no eval unless asked (a split of a small file
    could leave nothing to train on); the form and "Use in a new run" propose a split for them."""
    if {"eval_dataset", "eval_split"} & spec.model_fields_set:
        return spec
    proposed = default_eval(spec.dataset)["eval_dataset"]
    return spec.model_copy(update={"eval_dataset": proposed}) if proposed else spec


def is_sample_dataset(dataset: str, sample: Path = SAMPLE_TRAIN) -> bool:
    """True when `dataset` names the bundled sample's training file, or `sample` (by any path to it)."""
    try:
        return bool(dataset) and Path(dataset).resolve() == sample.resolve()
    except (OSError, ValueError):  # a NUL byte or a loop of links: not the sample, and refused elsewhere
        return False


def default_eval(dataset: str) -> dict[str, Any]:
    """The eval data that goes with a dataset when none is given: a bundled sample's own eval file (its pairs'
    for its pairs), or a held-out share of the dataset itself. Never another dataset's eval file."""
    for train, held_out in SAMPLE_EVALS.items():
        if is_sample_dataset(dataset, train) and held_out.is_file():
            return {"eval_dataset": str(held_out), "eval_split": 0.0}
    return {"eval_dataset": "", "eval_split": DEFAULT_EVAL_SPLIT}


DEFAULT_REGRESSION_PROMPTS = (
    "Write one sentence about the weather today.",
    "請用一句話介紹臺北。",
    "What is a JSON object? Answer in one sentence.",
    "List three fruits.",
)


def refuse_hidden_characters(what: str, value: str) -> None:
    # Control and bidirectional-override characters hide what a text says; refuse them.
    hidden = [ch for ch in value if unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t"]
    if hidden:
        codes = ", ".join(f"U+{ord(ch):04X}" for ch in dict.fromkeys(hidden))
        raise ValueError(f"{what}: contains invisible control characters ({codes})")


def hidden_characters_problem(what: str, value: str) -> str | None:
    """The refusal a text with hidden characters gets (a dataset's name, a path or id: a NUL byte there would
    make the OS refuse to look it up), or None."""
    try:
        refuse_hidden_characters(what, value)
    except ValueError as exc:
        return str(exc)
    return None


class Method(StrEnum):
    lora = "lora"
    qlora = "qlora"
    ia3 = "ia3"
    prompt_tuning = "prompt_tuning"


LORA_METHODS = (Method.lora.value, Method.qlora.value)


RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _auto_or_whole(value: Any, *, least: int, refusal: str) -> Any:
    """A field that is "auto" or a whole number of at least `least`, as the form sends it (text: empty means auto,
    as leaving the field out of an API request does) or as JSON; `refusal` names the field, {} the value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return "auto"
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value.strip()) and int(value.strip()) >= least:
        return int(value.strip())
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if number and value >= least and value == int(value):
        return int(value)
    raise ValueError(refusal.format(repr(value.strip()[:40]) if isinstance(value, str) else repr(value)))


class RunSpec(ObjectiveFields):
    """A fine-tuning run: base model, data, objective, PEFT method, quantization, training and checkpoints.
    Each objective's own fields (beta, loss_type, ...) come from app.objectives."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True, allow_inf_nan=False)

    # --- what and on what
    name: str = Field(default="", max_length=200, description="A name to find the run by; empty: made up.")
    base_model: str = Field(
        default_factory=lambda: get_settings().default_base_model,
        description="The model to adapt: a local directory holding config.json and safetensors weights, "
        "or a Hugging Face hub id (org/name) where the worker has a network.",
    )
    dataset: str = Field(
        default_factory=lambda: get_settings().default_dataset,
        description="Training data: a JSONL, CSV or Parquet file of prompt/completion, messages or text rows.",
    )
    eval_dataset: str = Field(default="", description="A second file for evaluation; empty: none (or eval_split).")
    eval_split: float = Field(
        default=0.0, ge=0.0, le=0.5, description="Share of the dataset held out for evaluation (0: none)."
    )
    train_on_prompt: bool = Field(
        default=False, description="Also compute the loss on prompts and user turns, not only on the answers."
    )
    chat_template: Literal["auto", "chatml", "llama-3", "zephyr", "alpaca"] = Field(
        default="auto",
        description="How messages rows are rendered: auto uses the tokenizer's own chat template, else chatml.",
    )
    # --- what it learns (app.objectives), and from where
    objective: ObjectiveName = Field(
        default="sft",
        description="What the run trains for: sft learns the dataset's answers; dpo, orpo and kto learn to prefer "
        "chosen answers to rejected ones (prompt/chosen/rejected data; kto also prompt/completion/label); grpo "
        "learns to write answers its rewards score higher (prompt/completion or messages data: the prompts, and "
        "the answers as the reference the rewards compare with).",
    )
    init_from_run: str = Field(
        default="",
        max_length=32,
        description="Start from the adapter of this finished run (its id) instead of a fresh one, on the same base "
        "model: SFT first, then DPO on top, is the usual recipe; a reference-based objective then compares with "
        "that run's model. Empty: a fresh adapter.",
    )
    # --- PEFT method
    method: Method = Field(
        default=Method.qlora,
        description="qlora: LoRA on a 4-bit (NF4) frozen base. lora: LoRA on the base in full precision. "
        "ia3: (IA)³ scaling vectors. prompt_tuning: trained virtual tokens before each input.",
    )
    quantization: Literal["auto", "none", "8bit", "4bit"] = Field(
        default="auto",
        description="How the frozen base is loaded: 4bit or 8bit through bitsandbytes, or none. "
        "auto: 4bit for qlora, none for the other methods.",
    )
    r: int = Field(default=8, ge=1, le=1024, description="LoRA attention dimension (the adapter's rank).")
    lora_alpha: int = Field(
        default=16, ge=1, le=4096, description="LoRA scaling: the update is scaled by lora_alpha / r."
    )
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA layers' input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, e.g. q_proj, v_proj; or all-linear for every linear layer "
        "except the output head (what QLoRA recommends).",
    )
    use_dora: bool = Field(
        default=False, description="DoRA: split each update into magnitude and direction (lora/qlora only)."
    )
    use_rslora: bool = Field(
        default=False, description="rsLoRA: scale by lora_alpha / sqrt(r), steadier at high rank (lora/qlora only)."
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        default="none", description="Which biases train: none, all, or those of adapted layers (lora_only)."
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter, e.g. lm_head, embed_tokens.",
    )
    feedforward_modules: list[str] = Field(
        default_factory=list,
        description="(IA)³ only: which target_modules are feed-forward layers; empty: PEFT's default.",
    )
    num_virtual_tokens: int = Field(
        default=16, ge=1, le=4096, description="Prompt tuning only: how many virtual tokens are trained."
    )
    prompt_tuning_init_text: str = Field(
        default="",
        description="Prompt tuning only: text whose token embeddings start the virtual tokens; empty: random.",
    )
    # --- quantization (bitsandbytes)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="4-bit data type for the frozen base weights (QLoRA: nf4)."
    )
    bnb_4bit_use_double_quant: bool = Field(
        default=True, description="Also quantize the quantization constants (saves ~0.4 bit per weight)."
    )
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Dtype the 4-bit layers compute in; auto: bfloat16 on a GPU that has it, else float32.",
    )
    # --- training (TrainingArguments)
    learning_rate: float = Field(default=2e-4, gt=0.0, le=1.0, description="Initial learning rate.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="How the learning rate changes over the run."
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of the steps spent ramping the learning rate up."
    )
    num_train_epochs: float = Field(
        default=1.0, ge=0.0, le=10_000, description="Passes over the data; used when max_steps is -1."
    )
    max_steps: int = Field(
        default=60, ge=-1, le=10_000_000, description="Optimizer steps to train for; -1: num_train_epochs decides."
    )
    per_device_train_batch_size: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Examples per device in each forward/backward pass; times gradient_accumulation_steps, the "
        "examples of one optimizer step (micro_batch_size may split them into other passes).",
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Passes whose gradients add up into one optimizer step."
    )
    micro_batch_size: Annotated[int, Field(ge=1, le=1_048_576)] | Literal["auto"] = Field(
        default="auto",
        description="Examples in one forward/backward pass, the optimizer step keeping per_device_train_batch_size "
        "x gradient_accumulation_steps examples (same batches, same losses). auto: on a GPU the largest that fits "
        "its free memory by the pre-flight estimate, and a pass that runs out of memory is redone in halves, the "
        "run going on; on the CPU the batch as set. A number: passes of that many (a divisor of the step's examples).",
    )
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd"] = Field(
        default="adamw_torch", description="Optimizer; the 8-bit and paged AdamW variants save GPU memory."
    )
    weight_decay: float = Field(default=0.0, ge=0.0, le=10.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        default=1.0, ge=0.0, le=1e6, description="Gradients are clipped to this norm; 0: no clipping."
    )
    gradient_checkpointing: Switch = Field(
        default="auto",
        description="Recompute activations in the backward pass: less memory, ~30% slower. auto: on only where "
        "the memory estimate does not fit the GPU's free memory.",
    )
    liger_kernel: Switch = Field(
        default="auto",
        description="Liger Kernel's fused Triton kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy), "
        "through transformers' use_liger_kernel (needs a CUDA GPU, Triton, the liger-kernel package: pip install "
        "'loradeck[fast]', and an architecture Liger covers). auto: off, saying why, until its losses are checked "
        "against the plain path on a GPU; on: used.",
    )
    torch_compile: Switch = Field(
        default="auto",
        description="Compile the model with torch.compile (transformers' torch_compile). auto: off until it is "
        "measured faster on this hardware; on: compiled as asked.",
    )
    max_seq_length: int = Field(
        default=256, ge=MIN_SEQ_LENGTH, le=MAX_SEQ_LENGTH, description="Examples are cut to this many tokens."
    )
    packing: Switch = Field(
        default="auto",
        description="Pack several short examples into each sequence, without cross-attention (no padding, the "
        "same loss). auto: on wherever it is loss-equal (not with prompt tuning; an architecture it is checked on).",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="Mixed precision for training; auto: bf16 on a GPU that has it, else fp32."
    )
    logging_steps: int = Field(default=1, ge=1, le=10_000_000, description="A metric point every this many steps.")
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed for weights init, data order and dropout.")
    # --- evaluation and checkpoints
    eval_steps: Annotated[int, Field(ge=0, le=10_000_000)] | Literal["auto"] = Field(
        default="auto",
        description="Evaluate (eval loss and token accuracy) every this many steps, when there is eval data; "
        f"auto (or empty): {AUTO_EVALUATIONS} times over the run, every max_steps/{AUTO_EVALUATIONS} steps "
        "rounded up; 0: only once, at the end.",
    )
    early_stopping_patience: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Stop after this many evaluations without a better eval loss and keep the best "
        "checkpoint as the result; 0: off.",
    )
    save_steps: int = Field(
        default=100,
        ge=0,
        le=10_000_000,
        description="Save a checkpoint (to resume from) every this many steps; 0: never.",
    )
    save_total_limit: int = Field(default=2, ge=1, le=1000, description="Checkpoints kept; older ones are deleted.")
    # --- where it runs
    worker: str = Field(
        default="",
        max_length=200,
        pattern=r"^[A-Za-z0-9_.@-]*$",
        description="Train only on the worker of this name (as the workers page lists it, e.g. worker-gpu0@host); "
        "empty: any worker that can hold the run.",
    )
    gpus: int = Field(
        default=1,
        ge=1,
        le=64,
        description="GPUs (processes) the run trains on; above 1 its worker launches it with accelerate (DDP) "
        "across that many GPUs of one machine, and only a worker with that many takes it.",
    )
    # --- after training: task metrics and regression prompts, base and adapter side by side
    task_eval_rows: int = Field(
        default=50,
        ge=0,
        le=100_000,
        description="After training, base and adapter answer up to this many eval rows (prompt/completion "
        "data, greedy): exact-match accuracy and, for JSON answers, the share of fields right; 0: off.",
    )
    regression_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REGRESSION_PROMPTS),
        max_length=20,
        description="General prompts that base and adapter both answer after training (chat template "
        "applied where the model has one), to see whether the fine-tune broke what the model could do.",
    )
    eval_max_new_tokens: int = Field(
        default=64, ge=1, le=4096, description="Longest answer, in tokens, for task metrics and regression prompts."
    )

    # --- single fields
    @field_validator("name", "base_model", "dataset", "eval_dataset", "prompt_tuning_init_text")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("name", "prompt_tuning_init_text", "base_model", "dataset", "eval_dataset")
    @classmethod
    def _printable(cls, value: str, info: ValidationInfo) -> str:
        refuse_hidden_characters(str(info.field_name), value)
        return value

    @field_validator("eval_steps", mode="before")
    @classmethod
    def _eval_steps(cls, value: Any) -> Any:
        return _auto_or_whole(value, least=0, refusal="eval_steps: {} is not a number of steps; give a whole "
                              "number (0: only at the end) or auto")  # fmt: skip

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _micro_batch_size(cls, value: Any) -> Any:
        return _auto_or_whole(value, least=1, refusal="micro_batch_size: {} is not a number of examples; give a "
                              "whole number (1 or more) or auto")  # fmt: skip

    @field_validator(*FAST_PATH_FIELDS, mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # Specs stored before these fields had auto, and API clients of that time, send a bool (the form's
        # checkbox sent "true"/"false"): true is on, false is off.
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return "on" if value.strip().lower() == "true" else "off"
        return value

    @field_validator("regression_prompts", mode="before")
    @classmethod
    def _split_lines(cls, value: Any) -> Any:
        # The form sends one prompt a line; the API sends a list.
        return value.splitlines() if isinstance(value, str) else value

    @field_validator("regression_prompts")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        prompts = [prompt.strip() for prompt in value if prompt.strip()]
        for number, prompt in enumerate(prompts, start=1):
            if len(prompt) > 2000:
                raise ValueError(f"regression_prompts: prompt {number} is {len(prompt)} characters; at most 2000")
            refuse_hidden_characters(f"regression_prompts: prompt {number}", prompt)
        return prompts

    @field_validator("init_from_run")
    @classmethod
    def _run_id(cls, value: str) -> str:
        value = value.strip()
        if value and not RUN_ID.match(value):
            raise ValueError(f"init_from_run: {value[:40]!r} is not a run id (as the run's page shows it)")
        return value

    @field_validator("base_model")
    @classmethod
    def _base_model_given(cls, value: str) -> str:
        if not value:
            raise ValueError("base_model is empty: give a local model directory or a hub id like org/name")
        return value

    @field_validator("dataset", "eval_dataset")
    @classmethod
    def _dataset_format(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name == "eval_dataset":
            return value
        name = Path(value).name
        if Path(value).suffix.lower() not in DATASET_SUFFIXES:
            raise ValueError(f"{info.field_name}: {name} is not one of {', '.join(DATASET_SUFFIXES)}")
        return value

    @field_validator("target_modules", "modules_to_save", "feedforward_modules", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        # The form sends one comma-separated string; the API may send either.
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        return value

    @field_validator("target_modules", "modules_to_save", "feedforward_modules")
    @classmethod
    def _module_names(cls, value: list[str], info: ValidationInfo) -> list[str]:
        bad = [name for name in value if name != "all-linear" and not MODULE_NAME.match(name)]
        if bad:
            raise ValueError(f"{info.field_name}: {', '.join(bad)} are not module names")
        return value

    @field_validator("target_modules")
    @classmethod
    def _target_modules(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("target_modules is empty: name modules such as q_proj, v_proj, or all-linear")
        if "all-linear" in value and len(value) > 1:
            raise ValueError("target_modules: all-linear already covers every linear layer; give it alone")
        return value

    # --- rules between fields, one each
    @model_validator(mode="before")
    @classmethod
    def _objective_defaults(cls, data: Any) -> Any:
        """The chosen objective's own defaults for shared fields it was not given (GRPO: loss_type dapo, beta 0)."""
        if isinstance(data, dict) and (chosen := REGISTRY.get(str(data.get("objective", "")))):
            missing = {name: value for name, value in chosen.spec_defaults.items() if data.get(name) in (None, "")}
            return data | missing if missing else data
        return data

    @model_validator(mode="after")
    def _objective_fields(self) -> RunSpec:
        # A stored spec holds every field: only a value other than the default is the user's choice.
        chosen = REGISTRY[self.objective]
        defaults = type(self).model_fields
        for name in self.model_fields_set:
            used_by = objectives_using(name)
            value = getattr(self, name)
            # A throughput switch set off asks for nothing, as its default (auto) does for another objective.
            if (
                used_by
                and self.objective not in used_by
                and value != defaults[name].get_default(call_default_factory=True)
                and not (name in FAST_PATH_FIELDS and value == "off")
            ):
                plural = "s" if len(used_by) > 1 else ""
                raise ValueError(f"{name}: only for objective{plural} {', '.join(used_by)}, not {chosen.name}")
        return self

    @model_validator(mode="after")
    def _batch_fits_objective(self) -> RunSpec:
        least = REGISTRY[self.objective].min_batch_size
        if self.per_device_train_batch_size < least:
            raise ValueError(
                f"per_device_train_batch_size: objective {self.objective} needs at least {least} rows per batch "
                "(its KL term compares each answer with another row's prompt); raise it"
            )
        return self

    @model_validator(mode="after")
    def _loss_fits_objective(self) -> RunSpec:
        losses = REGISTRY[self.objective].losses
        if losses and self.loss_type not in losses:
            raise ValueError(
                f"loss_type: {self.loss_type} is not a loss of objective {self.objective}; choose one of "
                f"{', '.join(losses)}"
            )
        return self

    @model_validator(mode="after")
    def _beta_fits_objective(self) -> RunSpec:
        if self.beta == 0 and REGISTRY[self.objective].beta_above_zero:
            raise ValueError(f"beta: objective {self.objective} needs beta above 0 (0.1 is usual)")
        return self

    @model_validator(mode="after")
    def _micro_batch_divides_the_step(self) -> RunSpec:
        step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        objective = REGISTRY[self.objective]
        pairs = objective.min_batch_size > 1  # KTO's KL term pairs the rows of a pass: another size, another loss
        if self.micro_batch_size not in ("auto", self.per_device_train_batch_size) and (objective.generates or pairs):
            why = "generates its completions" if objective.generates else "pairs the rows of a pass in its KL term"
            raise ValueError(
                f"micro_batch_size: objective {self.objective} {why}, so its passes are the batch as set; leave "
                f"micro_batch_size auto (or {self.per_device_train_batch_size})"
            )
        if self.micro_batch_size != "auto" and step % self.micro_batch_size:
            fits = [n for n in (1, 2, 4, 8, 16, 32, 64) if step % n == 0 and n <= step][-2:]
            raise ValueError(
                f"micro_batch_size: {self.micro_batch_size} does not divide the {step} examples of an optimizer step "
                f"(per_device_train_batch_size {self.per_device_train_batch_size} x gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}); give a divisor such as {' or '.join(map(str, fits))}, or auto"
            )
        return self

    @model_validator(mode="after")
    def _groups_fill_batches(self) -> RunSpec:
        completions = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if REGISTRY[self.objective].generates and completions % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size, num_generations: a GRPO step trains whole groups of num_generations "
                f"({self.num_generations}) completions, and per_device_train_batch_size x gradient_accumulation_steps "
                f"= {completions} is not a multiple of it; make it one (e.g. batch {self.num_generations})"
            )
        return self

    @model_validator(mode="after")
    def _early_stopping_fits_objective(self) -> RunSpec:
        if self.early_stopping_patience and not REGISTRY[self.objective].eval_loss:
            raise ValueError(
                f"early_stopping_patience: objective {self.objective} has no eval loss to stop on (its held-out "
                "figures are measured after training); set it to 0"
            )
        return self

    @model_validator(mode="after")
    def _method_fits_objective(self) -> RunSpec:
        allowed = REGISTRY[self.objective].methods
        if self.method not in allowed:
            raise ValueError(
                f"method: objective {self.objective} trains with method {' or '.join(allowed)}, not {self.method}"
            )
        return self

    @model_validator(mode="after")
    def _quantization_fits_method(self) -> RunSpec:
        if self.method == Method.qlora and self.quantization in ("none", "8bit"):
            raise ValueError(
                f"quantization: method qlora trains on a 4-bit base, not {self.quantization}; "
                "set quantization to 4bit (or auto), or choose method lora"
            )
        return self

    @model_validator(mode="after")
    def _lora_only_options(self) -> RunSpec:
        if self.method not in LORA_METHODS:
            used = [name for name in ("use_dora", "use_rslora") if getattr(self, name)]
            if used:
                raise ValueError(f"{', '.join(used)}: only for methods lora and qlora, not {self.method}")
        return self

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> RunSpec:
        if self.feedforward_modules and self.method != Method.ia3:
            raise ValueError(f"feedforward_modules: only for method ia3, not {self.method}")
        if self.feedforward_modules and self.target_modules != ["all-linear"]:
            outside = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if outside:
                raise ValueError(f"feedforward_modules: {', '.join(outside)} must also be in target_modules")
        return self

    @model_validator(mode="after")
    def _packing_needs_positions(self) -> RunSpec:
        # Packed rows are kept apart by their position ids, which prompt tuning's virtual tokens discard.
        if self.packing == "on" and self.method == Method.prompt_tuning:
            raise ValueError("packing: not with method prompt_tuning (its virtual tokens drop position ids)")
        return self

    @model_validator(mode="after")
    def _length_of_training(self) -> RunSpec:
        if self.max_steps == 0:
            raise ValueError("max_steps: 0 trains nothing; give a step count, or -1 to train num_train_epochs")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError("num_train_epochs: must be above 0 when max_steps is -1")
        return self

    @model_validator(mode="after")
    def _evaluation(self) -> RunSpec:
        if self.eval_dataset and self.eval_split:
            raise ValueError("eval_split: give either eval_dataset or eval_split, not both")
        has_eval = bool(self.eval_dataset or self.eval_split)
        if self.eval_steps != "auto" and self.eval_steps and not has_eval:
            raise ValueError("eval_steps: there is nothing to evaluate; set eval_dataset or eval_split")
        if self.early_stopping_patience:
            if self.eval_steps == 0:
                raise ValueError(
                    "early_stopping_patience: needs evaluations during training, and eval_steps 0 evaluates only "
                    "at the end; give eval_steps a number of steps, or auto"
                )
            if not has_eval:
                raise ValueError(
                    "early_stopping_patience: needs eval data (eval_dataset or eval_split) to watch the eval loss"
                )
            if self.eval_steps == "auto" and self.max_steps == -1:
                raise ValueError(
                    "early_stopping_patience: with max_steps -1 give eval_steps as a number (auto follows the "
                    "run's length, which is not known before it starts), and save_steps a multiple of it"
                )
            every = self.eval_every()
            if not self.save_steps or self.save_steps % every:
                auto = f" (auto: {every} for max_steps {self.max_steps})" if self.eval_steps == "auto" else ""
                raise ValueError(
                    f"save_steps: with early_stopping_patience it must be a multiple of eval_steps{auto}, "
                    "so the best evaluation has a checkpoint to keep"
                )
        return self

    def eval_every(self, total_steps: int | None = None) -> int:
        """Steps between evaluations during training; 0: none before the end. `auto` follows the run's length:
        max_steps, or `total_steps` (what the trainer worked out from the epochs) when max_steps is -1."""
        if not (self.eval_dataset or self.eval_split):
            return 0
        if self.eval_steps != "auto":
            return self.eval_steps
        steps = self.max_steps if self.max_steps > 0 else (total_steps or 0)
        # Rounded up, so the evaluations stay at most AUTO_EVALUATIONS, the last one at or near the end.
        return math.ceil(steps / AUTO_EVALUATIONS) if steps > 0 else 0

    @model_validator(mode="after")
    def _default_name(self) -> RunSpec:
        if not self.name:
            model = Path(self.base_model).name or self.base_model
            rank = f"-r{self.r}" if self.method in LORA_METHODS else ""
            objective = "" if self.objective == "sft" else f"{self.objective}-"
            self.name = f"{objective}{self.method}-{model}{rank}"
        return self
