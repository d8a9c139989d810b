"""Compare runs: their curves overlaid, and the config fields in which they differ."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app import runs
from app.models import Run
from app.runs import METRIC_FIELDS
from app.web.deps import SessionDep, templates
from app.web.routes.api import lookup_run

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


def compared_ids(request: Request) -> list[str]:
    ids = [run_id for run_id in request.query_params.getlist("runs") for run_id in run_id.split(",") if run_id]
    return list(dict.fromkeys(ids))[:MAX_COMPARED]


EXPORT_COLUMNS = ("run_id", "run_name", "step", "kind", "time", *METRIC_FIELDS)


@router.get("/compare/export", response_model=None)
def export_metrics(request: Request, session: SessionDep, format: str = "csv") -> Response:
    """Every metric point of the compared runs, one row per point: CSV or JSON, as a download."""
    rows = []
    for run in [lookup_run(session, run_id) for run_id in compared_ids(request)]:
        for metric in runs.list_metrics(session=session, run_id=run.id):
            values = {name: getattr(metric, name) for name in ("step", "kind", "time", *METRIC_FIELDS)}
            rows.append({"run_id": run.id, "run_name": run.name} | values)
    if format == "json":
        body, media = json.dumps(rows, indent=1), "application/json"
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        body, media, format = out.getvalue(), "text/csv", "csv"
    headers = {"Content-Disposition": f'attachment; filename="loradeck-metrics.{format}"'}
    return Response(body, media_type=media, headers=headers)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep) -> HTMLResponse:
    """Pick runs; their loss curves are overlaid and the fields that differ are listed."""
    ids = compared_ids(request)
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
