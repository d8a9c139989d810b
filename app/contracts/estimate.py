"""The pre-flight estimate an inspect worker answers (worker.engine.estimate) and the web shows."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ParamsOut(BaseModel):
    all: int = Field(description="All parameters, as PEFT's print_trainable_parameters() counts them.")
    trainable: int = Field(description="Parameters the run trains.")
    percent: float = Field(description="trainable as a share of all, in percent.")


class MemoryOut(BaseModel):
    weights: int = Field(description="Bytes of the frozen base model (quantized layers at their packed size).")
    adapter: int = Field(description="Bytes of what PEFT adds: LoRA matrices, (IA)³ vectors, virtual tokens, ...")
    gradients: int = Field(description="Bytes of the trainable parameters' gradients.")
    optimizer: int = Field(description="Bytes of the optimizer's states.")
    activations: int = Field(description="Bytes kept for the backward pass at the step's peak.")
    total: int = Field(description="The sum of the above, per GPU.")


class ModelOut(BaseModel):
    architecture: str
    layers: int
    hidden_size: int
    vocab_size: int
    dtype: str = Field(description="The dtype the base is loaded in (quantized layers aside).")
    quantization: str = Field(default="none", description="none, 8bit or 4bit.")
    target_choices: dict[str, str] = Field(
        default_factory=dict,
        description="target_modules values from the model's own module names: attention only, all linear, "
        "with embeddings (label -> value).",
    )


class EstimateOut(BaseModel):
    params: ParamsOut
    memory: MemoryOut
    model: ModelOut
    notes: list[str] = Field(default_factory=list, description="Assumptions behind the numbers.")


class EstimateAnswer(BaseModel):
    """The inspect task's answer: the estimate, or why the worker refuses the spec (naming its field)."""

    ok: bool
    estimate: EstimateOut | None = None
    error: str | None = None
