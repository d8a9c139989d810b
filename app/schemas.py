"""RunSpec and the API's response shapes.

RunSpec field names follow PEFT's `LoraConfig`, transformers' `TrainingArguments` and
`BitsAndBytesConfig`, so a spec reads like the code it configures. Every field has a description:
the new-run form shows it as help text, and a test checks the README or the form documents it.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.config import get_settings

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
MODULE_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


class Method(StrEnum):
    lora = "lora"
    qlora = "qlora"


class RunSpec(BaseModel):
    """Everything a run needs, validated once and frozen into the database at creation."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    name: str = Field(default="", max_length=200, description="A name to find the run by; empty: made up.")
    base_model: str = Field(
        default_factory=lambda: get_settings().default_base_model,
        description="The model to adapt: a local directory holding config.json and safetensors weights, "
        "or a Hugging Face hub id (org/name) where the worker has a network.",
    )
    dataset: str = Field(
        default_factory=lambda: get_settings().default_dataset,
        description='A JSONL file of {"prompt": ..., "completion": ...} rows. The loss is on completions.',
    )
    eval_dataset: str = Field(
        default="",
        description="An optional second JSONL file for the eval loss; empty: none.",
    )
    method: Method = Field(
        default=Method.qlora,
        description="qlora: the base is loaded 4-bit (NF4) and frozen, LoRA adapters train on top. "
        "lora: the base stays in its full precision.",
    )
    # --- PEFT LoraConfig
    r: int = Field(default=8, ge=1, le=1024, description="LoRA attention dimension (the adapter's rank).")
    lora_alpha: int = Field(
        default=16, ge=1, le=4096, description="LoRA scaling: the update is scaled by lora_alpha / r."
    )
    lora_dropout: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA layers' input."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, e.g. q_proj, v_proj; or all-linear for every linear layer "
        "except the output head (what QLoRA recommends).",
    )
    # --- BitsAndBytesConfig (qlora only)
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
    # --- TrainingArguments
    learning_rate: float = Field(default=2e-4, gt=0.0, le=1.0, description="Initial AdamW learning rate.")
    max_steps: int = Field(default=60, ge=1, le=10_000_000, description="Optimizer steps to train for.")
    per_device_train_batch_size: int = Field(
        default=8, ge=1, le=4096, description="Examples per device in each forward/backward pass."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Passes whose gradients add up into one optimizer step."
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of max_steps spent ramping the learning rate up."
    )
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="How the learning rate changes over the run."
    )
    max_seq_length: int = Field(
        default=256, ge=8, le=1_048_576, description="Examples are cut to this many tokens."
    )
    logging_steps: int = Field(default=1, ge=1, description="A metric point every this many steps.")
    seed: int = Field(default=42, ge=0, description="Seed for weights init, data order and dropout.")

    @field_validator("name", "base_model", "dataset", "eval_dataset")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("base_model")
    @classmethod
    def _base_model_exists(cls, value: str) -> str:
        if not value:
            raise ValueError("base_model is empty: give a local model directory or a hub id like org/name")
        path = Path(value).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"base_model: {value} is a directory without config.json")
            return str(path.resolve())
        if HUB_ID.match(value) and not value.startswith((".", "/")):
            return value
        raise ValueError(f"base_model: {value} is neither a local model directory nor a hub id (org/name)")

    @field_validator("dataset", "eval_dataset")
    @classmethod
    def _dataset_exists(cls, value: str, info: Any) -> str:
        if not value and info.field_name == "eval_dataset":
            return value
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{info.field_name}: no file at {value}")
        if path.suffix != ".jsonl":
            raise ValueError(f"{info.field_name}: {path.name} is not a .jsonl file")
        return str(path.resolve())

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        # The form sends one comma-separated string; the API may send either.
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        return value

    @field_validator("target_modules")
    @classmethod
    def _check_modules(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("target_modules is empty: name modules such as q_proj, v_proj, or all-linear")
        if "all-linear" in value and len(value) > 1:
            raise ValueError("target_modules: all-linear already covers every linear layer; give it alone")
        bad = [name for name in value if name != "all-linear" and not MODULE_NAME.match(name)]
        if bad:
            raise ValueError(f"target_modules: {', '.join(bad)} are not module names")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> RunSpec:
        if not self.name:
            model = Path(self.base_model).name or self.base_model
            self.name = f"{self.method}-{model}-r{self.r}"
        return self


class RunOut(BaseModel):
    """A run as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    worker: str | None
    params_all: int | None
    params_trainable: int | None
    params_percent: float | None
    step: int
    max_steps: int | None
    last_loss: float | None


class MetricOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    kind: str
    time: float
    epoch: float | None
    loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_sec: float | None
    tokens_seen: int | None


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    run_id: str
    kind: str
    status: str
    size_bytes: int | None
    sha256: str | None
    files: list[dict[str, Any]] | None
    details: dict[str, Any] | None
    error: str | None
    created_at: datetime
    download_url: str | None = None


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype of the merged weights; auto: the base model's own dtype."
    )
