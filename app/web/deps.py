"""Dependency aliases and the template engine, in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.config import TEMPLATES_DIR, Settings, get_settings
from app.db import get_db
from app.runs import duration, exact_match, progress_of

SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals["progress_of"] = progress_of
templates.env.globals["exact_match"] = exact_match
templates.env.filters["duration"] = duration


def is_htmx(request: Request) -> bool:
    """True when htmx sent the request, so the answer is a fragment rather than a whole page."""
    return request.headers.get("HX-Request") == "true"
