"""Compare runs: their curves overlaid, and the config fields in which they differ."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app import runs
from app.deps import SessionDep, templates
from app.models import Run
from app.routes.api import lookup_run

router = APIRouter(include_in_schema=False)
MAX_COMPARED = 8


def differing_fields(compared: list[Run]) -> list[dict[str, Any]]:
    """The spec fields whose values are not the same in every run, with each run's value."""
    names: list[str] = []
    for run in compared:
        names += [name for name in run.spec if name not in names]
    rows = []
    for name in names:
        values = [run.spec.get(name) for run in compared]
        if any(value != values[0] for value in values[1:]):
            rows.append({"field": name, "values": values})
    return rows


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep) -> HTMLResponse:
    """Pick runs; their loss curves are overlaid and the fields that differ are listed."""
    ids = [run_id for run_id in request.query_params.getlist("runs") for run_id in run_id.split(",") if run_id]
    ids = list(dict.fromkeys(ids))[:MAX_COMPARED]
    compared = [lookup_run(session, run_id) for run_id in ids]
    eval_losses = runs.final_eval_losses(session=session, run_ids=ids)
    sort = request.query_params.get("sort", "")
    context = {
        "compared": compared,
        "results": runs.sort_runs(compared, eval_losses, sort),
        "eval_losses": eval_losses,
        "sort": sort,
        "differences": differing_fields(compared) if len(compared) > 1 else [],
        "candidates": runs.list_runs(session=session, limit=100),
        "selected": set(ids),
    }
    return templates.TemplateResponse(request, "compare.html", context)
