"""The web app: `uvicorn app.main:app`. Pages, the JSON API, and a health check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app.config import STATIC_DIR
from app.db import schema_problem
from app.schemas import RunSpec
from app.services.health import health
from app.web import errors, openai_errors
from app.web.deps import render
from app.web.live import close_hubs
from app.web.routes import (
    api,
    api_keys,
    auth,
    compare,
    datasets,
    estimate,
    openai_api,
    openai_jobs,
    openai_models,
    pages,
    playground,
    workers,
)
from app.web.security import SecurityMiddleware
from app.web.uploads import BodyLimitMiddleware


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    problem = schema_problem()
    if problem:
        raise SystemExit(f"loradeck: {problem}")
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
for module in (
    api,
    pages,
    estimate,
    compare,
    workers,
    datasets,
    auth,
    playground,
    api_keys,
    openai_api,
    openai_jobs,
    openai_models,
):
    app.include_router(module.router)
errors.install(app)
openai_errors.install(app)  # `/v1` answers in OpenAI's error shape


def openapi() -> dict[str, Any]:
    """FastAPI's document, plus the RunSpec schema the run and estimate bodies refer to (they are read as JSON
    and checked by a service, so FastAPI does not see the model)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        spec = RunSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(spec.pop("$defs", {}))
        schema["components"]["schemas"]["RunSpec"] = spec
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = openapi  # type: ignore[method-assign]


@app.get("/api/docs", include_in_schema=False)
def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI from vendored files: FastAPI's own page loads it from a CDN with an inline script, which
    the Content-Security-Policy (and an offline machine) refuses."""
    return render(request, "api_docs.html", {})


@app.get("/healthz", tags=["api"])
def healthz() -> JSONResponse:
    """Web, database and Redis reachable."""
    report = health()
    return JSONResponse(report, status_code=200 if report["ok"] else 503)
