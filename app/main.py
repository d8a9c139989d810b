"""The web app: `uvicorn app.main:app`. Pages, the JSON API, and a health check."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app.config import STATIC_DIR
from app.health import health
from app.web.deps import templates
from app.web.live import close_hubs
from app.web.routes import api, auth, compare, datasets, estimate, pages, playground, workers
from app.web.security import SecurityMiddleware
from app.web.uploads import BodyLimitMiddleware


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await close_hubs()  # the live feeds' Redis connections


app = FastAPI(
    title="loradeck",
    version="0.1.0",
    docs_url=None,
    redoc_url=None,
    openapi_url="/api/v1/openapi.json",
    lifespan=lifespan,
)
app.add_middleware(BodyLimitMiddleware)
app.add_middleware(SecurityMiddleware)
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
app.include_router(api.router)
app.include_router(pages.router)
app.include_router(estimate.router)
app.include_router(compare.router)
app.include_router(workers.router)
app.include_router(datasets.router)
app.include_router(auth.router)
app.include_router(playground.router)


def _finite(value: Any) -> Any:
    # A refused NaN or Infinity is echoed back in the error, and JSON has no spelling for it.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with every field's problem, as FastAPI words it, even for a value JSON cannot spell."""
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(exc.errors()))})


@app.get("/api/docs", include_in_schema=False)
def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI from vendored files: FastAPI's own page loads it from a CDN with an inline script, which
    the Content-Security-Policy (and an offline machine) refuses."""
    return templates.TemplateResponse(request, "api_docs.html", {})


@app.get("/healthz", tags=["api"])
def healthz() -> JSONResponse:
    """Web, database and Redis reachable."""
    report = health()
    return JSONResponse(report, status_code=200 if report["ok"] else 503)
