"""Shapes of the JSON API's answers (RunSpec, what a run is made of, lives in app/schemas.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.contracts.evaluation import Evaluation
from app.contracts.events import SamplesEvent
from app.models import Artifact, ArtifactStatus
from app.schemas import GgufType


class FastPathOut(BaseModel):
    """One throughput switch of a run, as the worker resolved it (worker.engine.fastpaths)."""

    name: str = Field(
        description="The RunSpec field: packing, micro_batch_size, gradient_checkpointing, liger_kernel, torch_compile."
    )
    asked: str = Field(description="The value in the spec: auto, on or off (micro_batch_size: auto or a number).")
    chosen: str = Field(description="What the run used: on or off (micro_batch_size: examples a pass).")
    reason: str = Field(description="Why, in one sentence.")


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
    worker: str | None = Field(
        description="The process that holds the run's lease while it trains (host:pid). Not RunSpec.worker, "
        "which names the Celery worker (node name) a run is pinned to."
    )
    params_all: int | None
    params_trainable: int | None
    params_percent: float | None
    step: int
    max_steps: int | None
    last_loss: float | None
    attempts: int = Field(default=0, description="Workers lost while training it; resumed each time.")
    stop_requested: bool = Field(
        default=False, description="Stop was asked: it ends `stopped` at its next step, adapter saved."
    )
    archived_at: datetime | None = Field(default=None, description="When it was archived (hidden from lists).")
    evaluation: Evaluation | None = Field(
        default=None,
        description="After training: task metrics (exact match, JSON fields right) and regression prompts' "
        "answers, each for the base and the adapter; `base` names that base (label, dtype, quantization): for "
        "a run trained on a quantized copy, the full-precision base the merged download uses.",
    )
    hardware: dict[str, Any] | None = Field(
        default=None,
        description="What it trained on, recorded as training began: `device` (the GPU's name, or cpu), `peak_flops` "
        "(the GPU's dense bf16 peak; null for the CPU or a GPU not in loradeck's table: no MFU), `flops_per_token` "
        "(model FLOPs a trained token costs, from the model's shape and `mean_row_tokens`; null for a shape "
        'without a formula), `gpus`, `mean_row_tokens`, and `no_mfu`: what MFU needs that the run lacks ("needs a '
        'known GPU"), null when it has MFU.',
    )
    fast_paths: list[FastPathOut] | None = Field(
        default=None,
        description="The throughput switches (packing, micro_batch_size, gradient_checkpointing, liger_kernel, "
        "torch_compile) as "
        "the worker resolved them when training started: what the spec asked, what the run used, and why. "
        "None until a worker has started it.",
    )


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
    token_accuracy: float | None = Field(
        default=None,
        description="Eval points: the share of the eval data's trained label tokens whose argmax prediction is right.",
    )
    values: dict[str, float | None] = Field(
        default_factory=dict,
        description="The objective's own named values at this point, as TRL logs them (e.g. rewards/margins, "
        "rewards/accuracies for dpo); empty for sft.",
    )
    mfu: float | None = Field(
        default=None,
        description="Train points: model FLOPs utilisation (0..1) over the interval tokens_per_sec covers: "
        "tokens_per_sec x the run's hardware.flops_per_token / (peak_flops x gpus); null without a known GPU.",
    )
    gpu_memory_bytes: int | None = Field(
        default=None, description="GPU memory allocated by torch at this point; null on the CPU."
    )
    gpu_peak_bytes: int | None = Field(
        default=None, description="The most GPU memory torch allocated since training began; null on the CPU."
    )


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


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: GgufType = Field(
        default="q8_0",
        description="GGUF type: f16 or bf16 (the weights rounded to 16 bits), q8_0 (8-bit, half the size), "
        "q4_k_m (4-bit k-quants, about a third); each is checked by llama.cpp against transformers.",
    )


class CheckpointOut(BaseModel):
    name: str = Field(description="Trainer's folder name, checkpoint-<step>.")
    step: int
    size_bytes: int
    complete: bool = Field(
        default=True,
        description="Trainer finished writing it: it can be resumed from, or used as the adapter "
        "(false while it is being saved, or when a save was cut off).",
    )


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Train to this step instead of the spec's max_steps (above the checkpoint's step); "
        "the learning-rate schedule follows the new length.",
    )


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="dtype of the merged weights; auto: the base model's own dtype."
    )


def artifact_out(artifact: Artifact) -> ArtifactOut:
    """An artifact as the API and the pages show it: a ready one with its download URL."""
    out = ArtifactOut.model_validate(artifact)
    if artifact.status == ArtifactStatus.ready:
        out.download_url = f"/api/v1/artifacts/{artifact.id}/download"
    return out


class SamplesOut(BaseModel):
    """GRPO: the completions sampled while it trains, each event one prompt with a few completions and their
    rewards, oldest first."""

    samples: list[SamplesEvent]
