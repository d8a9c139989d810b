"""OpenAI's API under `/v1` (see app.web.routes.openai_api): fine-tuning jobs, their events and checkpoints."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["openai"])
