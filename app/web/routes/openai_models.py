"""OpenAI's API under `/v1` (see app.web.routes.openai_api): models, and chat completions and completions
through the generate worker."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["openai"])
