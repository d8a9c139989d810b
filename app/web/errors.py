"""Domain errors -> HTTP, in one place: each kind has its status, and the body is `{"detail": ...}` as FastAPI's
own errors are. A refused spec lists its problems like a refused request body (`loc` starting with "body")."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.errors import Conflict, DomainError, InputTooLarge, InvalidInput, NotFound, Refused, Unavailable

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


async def domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return JSONResponse(status_code=http_status(exc), content={"detail": detail(exc)})


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """422 with every field's problem, as FastAPI words it, even for a value JSON cannot spell."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": finite(jsonable_encoder(exc.errors()))})


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
