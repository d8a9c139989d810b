"""The workers view: who is online, which queues and GPUs each serves, and what each is running."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.web.deps import SettingsDep, is_htmx, templates
from app.workers import list_workers

router = APIRouter()


def online(settings: SettingsDep) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
    try:
        return list_workers(client)
    finally:
        client.close()


@router.get("/api/v1/workers", tags=["api"])
def workers_api(settings: SettingsDep) -> list[dict[str, Any]]:
    """The workers online: host, queues, GPUs with free memory, and the task each is running."""
    return online(settings)


@router.get("/workers", response_class=HTMLResponse, include_in_schema=False)
def workers_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The workers view; the table refreshes itself."""
    template = "_workers_table.html" if is_htmx(request) else "workers.html"
    return templates.TemplateResponse(request, template, {"workers": online(settings)})
