"""The workers view: who is online, which queues and GPUs each serves, and what each is running."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.contracts.workers import WorkerRecord
from app.services import workers
from app.web.deps import SettingsDep, page_or_fragment, render

router = APIRouter()


@router.get("/api/v1/workers", tags=["api"])
def workers_api(settings: SettingsDep) -> list[WorkerRecord]:
    """The workers online: host, queues, GPUs with free memory, and the task each is running."""
    return workers.online(settings=settings)


@router.get("/workers", response_class=HTMLResponse, include_in_schema=False)
def workers_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The workers view; the table refreshes itself."""
    template = page_or_fragment(request, "workers.html", "_workers_table.html")
    return render(request, template, {"workers": workers.online(settings=settings)})
