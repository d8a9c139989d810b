"""The pre-flight estimate: parameter counts and training memory for a spec, before anything is queued.

An inspect worker answers from the base model's config.json alone (worker.engine.estimate); the web only
forwards the spec, so it never imports an ML library.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.contracts.estimate import EstimateOut
from app.errors import Refused
from app.preflight import validate_spec
from app.queue import ask_estimate
from app.schemas import RunSpec

GPU_SIZES_GB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141, 192)
CUDA_OVERHEAD = 2**30  # the CUDA context and allocator slack the estimate leaves out


def estimate(*, settings: Settings, body: Any) -> EstimateOut:
    """The estimate of a spec as a client sends it: InvalidInput naming every problem, Refused when the
    worker cannot estimate it, Unavailable when no worker answers."""
    return estimate_spec(validate_spec(body, settings, loadable=False))  # from config.json alone


def estimate_spec(spec: RunSpec) -> EstimateOut:
    answer = ask_estimate(spec.model_dump(mode="json"))
    if not answer.ok or answer.estimate is None:
        raise Refused(answer.error or "the worker could not estimate this spec")
    return answer.estimate


def smallest_gpu_gb(estimate: EstimateOut) -> int | None:
    """The smallest common GPU size (GiB) the run fits in, the CUDA context included; None: none listed."""
    needed = estimate.memory.total + CUDA_OVERHEAD
    return next((size for size in GPU_SIZES_GB if size * 2**30 >= needed), None)
