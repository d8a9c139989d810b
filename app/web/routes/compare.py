"""Compare runs: their curves overlaid, and the config fields in which they differ."""

from __future__ import annotations

import csv
import io
import json
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.services import compare as service
from app.web.deps import SessionDep, context_of, render

router = APIRouter(include_in_schema=False)


def compared_ids(request: Request) -> list[str]:
    return [run_id for run_id in request.query_params.getlist("runs") for run_id in run_id.split(",") if run_id]


@router.get("/compare/export", response_model=None)
def export_metrics(request: Request, session: SessionDep, format: Literal["csv", "json"] = "csv") -> Response:
    """Every metric point of the compared runs, one row per point: CSV or JSON, as a download."""
    rows = service.metric_rows(session=session, run_ids=compared_ids(request))
    if format == "json":
        body, media = json.dumps(rows, indent=1), "application/json"
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=service.EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        body, media = out.getvalue(), "text/csv"
    headers = {"Content-Disposition": f'attachment; filename="loradeck-metrics.{format}"'}
    return Response(body, media_type=media, headers=headers)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep) -> HTMLResponse:
    """Pick runs; their loss curves are overlaid and the fields that differ are listed."""
    comparison = service.compare(
        session=session, run_ids=compared_ids(request), sort=request.query_params.get("sort", "")
    )
    selected = {run.id for run in comparison.compared}
    return render(request, "compare.html", context_of(comparison) | {"selected": selected})
