"""The pre-flight estimate: parameter counts and training memory for a spec, before anything is queued.

A worker answers it on the inspect queue from the base model's config.json alone (`worker.engine.estimate`);
the web only forwards the spec and shows the answer, so it never imports an ML library.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field, ValidationError

from app.queue import ESTIMATE_TASK, InspectUnavailable, ask_inspector
from app.schemas import RunSpec
from app.web.deps import templates
from app.web.forms import form_values, validation_errors

router = APIRouter()

GPU_SIZES_GB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141, 192)
CUDA_OVERHEAD = 2**30  # the CUDA context and allocator slack the estimate leaves out


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


def request_estimate(spec: RunSpec) -> dict[str, Any]:
    """Ask an inspect worker. HTTPException 400 when it refuses the spec, 503 when none answers."""
    try:
        answer = ask_inspector(ESTIMATE_TASK, spec.model_dump(mode="json"))
    except InspectUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise HTTPException(503, f"the task queue (Redis) is unreachable, so no worker was asked: {exc}") from exc
    if not answer.get("ok"):
        raise HTTPException(400, str(answer.get("error") or "the worker could not estimate this spec"))
    return dict(answer["estimate"])


@router.post("/api/v1/estimate", tags=["api"])
def estimate(spec: RunSpec) -> EstimateOut:
    """Parameter counts and a memory estimate for a RunSpec, from the base model's config.json alone."""
    return EstimateOut.model_validate(request_estimate(spec))


@router.post("/runs/estimate", response_class=HTMLResponse, include_in_schema=False)
async def estimate_fragment(request: Request) -> HTMLResponse:
    """The new-run form's estimate card, for whatever the form holds now (htmx posts it as fields change)."""
    values = form_values(await request.form())
    context: dict[str, Any] = {"estimate": None, "estimate_errors": {}, "estimate_error": None}
    try:
        spec = RunSpec.model_validate(values)
    except ValidationError as exc:
        context["estimate_errors"] = validation_errors(exc)
    else:
        try:
            context |= card_context(await run_in_threadpool(request_estimate, spec))
        except HTTPException as exc:
            context["estimate_error"] = str(exc.detail)
    # Always 200: the card shows a refusal in place of the numbers rather than keeping stale ones.
    return templates.TemplateResponse(request, "_estimate.html", context)


def card_context(estimate: dict[str, Any]) -> dict[str, Any]:
    """The numbers as the card shows them: human units, each part's share of the total, a GPU class."""
    memory = estimate["memory"]
    total = max(int(memory["total"]), 1)
    rows = [
        {
            "key": key,
            "help": field.description,
            "bytes": memory[key],
            "human": human_bytes(memory[key]),
            "share": memory[key] / total,
        }
        for key, field in MemoryOut.model_fields.items()
        if key != "total"
    ]
    needed = total + CUDA_OVERHEAD
    gpu = next((size for size in GPU_SIZES_GB if size * 2**30 >= needed), None)
    return {"estimate": estimate, "rows": rows, "total": human_bytes(total), "gpu_gb": gpu}


def human_bytes(count: float) -> str:
    """1536 -> "1.5 KiB"; binary units, as GPU memory is counted."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
