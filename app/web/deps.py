"""Dependency aliases and the template engine, in one place."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session

from app.config import TEMPLATES_DIR, Settings, get_settings
from app.contracts.artifacts import export_details_of
from app.contracts.evaluation import evaluation_of
from app.db import get_db
from app.errors import InvalidInput
from app.formatting import FINAL_STATUSES, duration, human_bytes, progress_of, visible_controls
from app.runs import exact_match
from app.schemas import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH

SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals["progress_of"] = progress_of
templates.env.globals["exact_match"] = exact_match
templates.env.globals["evaluation_of"] = evaluation_of
templates.env.globals["export_details_of"] = export_details_of
templates.env.globals["final_statuses"] = FINAL_STATUSES
templates.env.globals["seq_length_bounds"] = (MIN_SEQ_LENGTH, MAX_SEQ_LENGTH)
templates.env.filters["duration"] = duration
templates.env.filters["bytes"] = human_bytes


def shown(value: Any) -> Any:
    """Every value a template prints: names users chose (runs, datasets, files) reach many pages, so a
    bidirectional control in any of them is escaped here, once, rather than at each place a name appears."""
    if isinstance(value, Markup):
        return Markup(visible_controls(str(value)))
    return visible_controls(value) if isinstance(value, str) else value


templates.env.finalize = shown


# A RunSpec body is read as JSON and checked by a service (its shape and its files on disk, every problem in one
# answer); the OpenAPI document still says it is a RunSpec (app.main adds the schema).
RUN_SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunSpec"}}},
    }
}


async def read_json(request: Request) -> Any:
    """The request's JSON body; one that is not JSON is refused as FastAPI refuses it."""
    try:
        return await request.json()
    except ValueError as exc:
        raise InvalidInput(errors=[{"type": "json_invalid", "loc": [], "msg": f"JSON decode error: {exc}"}]) from exc
    except RecursionError:  # `[[[[...]]]]` a few thousand deep: no spec nests more than two levels
        message = "JSON decode error: nested too deeply; a run spec is an object of fields, lists at most"
        raise InvalidInput(errors=[{"type": "json_invalid", "loc": [], "msg": message}]) from None


def is_htmx(request: Request) -> bool:
    """True when htmx sent the request, so the answer is a fragment rather than a whole page."""
    return request.headers.get("HX-Request") == "true"


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def context_of(view: Any) -> dict[str, Any]:
    """A service's view dataclass as template context, its fields as they are (dataclasses.asdict would
    deep-copy the rows in it)."""
    return {item.name: getattr(view, item.name) for item in fields(view)}


def page_or_fragment(request: Request, page: str, fragment: str) -> str:
    """The template for this request: the fragment alone when htmx asks, else the whole page."""
    return fragment if is_htmx(request) else page
