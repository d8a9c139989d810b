"""The web app: `uvicorn app.main:app`. Pages, the JSON API, and a health check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from app.config import REPO_ROOT
from app.health import health
from app.live import close_hubs
from app.routes import api, auth, compare, datasets, estimate, pages, playground, workers
from app.security import SecurityMiddleware


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await close_hubs()  # the live feeds' Redis connections


app = FastAPI(
    title="loradeck", version="0.1.0", docs_url="/api/docs", openapi_url="/api/v1/openapi.json", lifespan=lifespan
)
app.add_middleware(SecurityMiddleware)
app.mount("/static", StaticFiles(directory=REPO_ROOT / "static"), name="static")
app.include_router(api.router)
app.include_router(pages.router)
app.include_router(estimate.router)
app.include_router(compare.router)
app.include_router(workers.router)
app.include_router(datasets.router)
app.include_router(auth.router)
app.include_router(playground.router)


@app.get("/healthz", tags=["api"])
def healthz() -> JSONResponse:
    """Web, database and Redis reachable."""
    report = health()
    return JSONResponse(report, status_code=200 if report["ok"] else 503)
