"""The pre-flight estimate: parameter counts and training memory for a spec, before anything is queued
(app.services.estimates asks an inspect worker; the web never imports an ML library)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from app.contracts.estimate import EstimateOut, MemoryOut
from app.errors import DomainError, InvalidInput
from app.formatting import human_bytes
from app.services import estimates
from app.web.deps import RUN_SPEC_BODY, SettingsDep, read_json, render
from app.web.errors import field_messages
from app.web.forms import form_values

router = APIRouter()


@router.post("/api/v1/estimate", tags=["api"], openapi_extra=RUN_SPEC_BODY)
async def estimate(request: Request, settings: SettingsDep) -> EstimateOut:
    """Parameter counts and a memory estimate for a RunSpec, from the base model's config.json alone."""
    body = await read_json(request)
    return await run_in_threadpool(estimates.estimate, settings=settings, body=body)


@router.post("/runs/estimate", response_class=HTMLResponse, include_in_schema=False)
async def estimate_fragment(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The new-run form's estimate card, for whatever the form holds now (htmx posts it as fields change)."""
    values = form_values(await request.form())
    context: dict[str, Any] = {"estimate": None, "estimate_errors": {}, "estimate_error": None}
    try:
        context |= card_context(await run_in_threadpool(estimates.estimate, settings=settings, body=values))
    except InvalidInput as exc:
        context["estimate_errors"] = field_messages(exc) if exc.errors else {"form": str(exc)}
    except DomainError as exc:
        context["estimate_error"] = str(exc)
    # Always 200: the card shows a refusal in place of the numbers rather than keeping stale ones.
    return render(request, "_estimate.html", context)


def card_context(estimate: EstimateOut) -> dict[str, Any]:
    """The numbers as the card shows them: human units, each part's share of the total, a GPU class."""
    memory = estimate.memory
    total = max(memory.total, 1)
    rows = [
        {
            "key": key,
            "help": field.description,
            "bytes": getattr(memory, key),
            "human": human_bytes(getattr(memory, key)),
            "share": getattr(memory, key) / total,
        }
        for key, field in MemoryOut.model_fields.items()
        if key != "total"
    ]
    gpu = estimates.smallest_gpu_gb(estimate)
    return {"estimate": estimate, "rows": rows, "total": human_bytes(memory.total), "gpu_gb": gpu}
