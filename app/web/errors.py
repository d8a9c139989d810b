"""Domain errors -> HTTP, in one place: each kind has its status, and the body is `{"detail": ...}` as FastAPI's
own errors are. A refused spec lists its problems like a refused request body (`loc` starting with "body")."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from app.errors import Conflict, DomainError, InputTooLarge, InvalidInput, NotFound, Refused, Unavailable
from app.web.deps import render

STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (InputTooLarge, 413),  # before InvalidInput, of which it is one
    (InvalidInput, 422),
    (Refused, 400),
    (Unavailable, 503),
)


def http_status(exc: DomainError) -> int:
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 500)


def detail(exc: DomainError) -> Any:
    """What goes under `detail`: the field problems of a refused body, a message with its findings, or the
    message alone."""
    if isinstance(exc, InvalidInput) and exc.errors:
        return finite(jsonable_encoder([error | {"loc": ["body", *error.get("loc", ())]} for error in exc.errors]))
    if isinstance(exc, InvalidInput) and exc.problems:
        return {"message": str(exc), "problems": exc.problems}
    return str(exc)


def field_messages(exc: InvalidInput) -> dict[str, str]:
    """Field -> message (without pydantic's "Value error, "), for a form that shows each under its field."""
    messages: dict[str, str] = {}
    for error in exc.errors:
        name = str(error["loc"][0]) if error.get("loc") else "form"
        messages.setdefault(name, str(error.get("msg", "")).removeprefix("Value error, "))
    return messages


def finite(value: Any) -> Any:
    # A refused NaN or Infinity is echoed back in the error, and JSON has no spelling for it.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def wants_page(request: Request) -> bool:
    """A browser asking for a page (not the API, nor a static file, nor an htmx fragment): it gets an HTML
    page saying what went wrong, where the API answers JSON."""
    path = request.url.path
    return (
        request.method in ("GET", "HEAD")
        and not path.startswith(("/api/", "/static/"))
        and request.headers.get("HX-Request") != "true"
    )


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", {"status": status, "message": message}, status_code=status)


async def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    if wants_page(request):
        return error_page(request, http_status(exc), str(exc))
    return JSONResponse(status_code=http_status(exc), content={"detail": detail(exc)})


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own errors (an unknown path, a wrong method): JSON for the API, a page for a browser."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and wants_page(request):
        return error_page(request, 404, f"There is no page at {request.url.path}.")
    return await http_exception_handler(request, exc)


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """422 with every field's problem, as FastAPI words it, even for a value JSON cannot spell."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": finite(jsonable_encoder(exc.errors()))})


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
