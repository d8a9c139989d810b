"""Errors under `/v1` in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with OpenAI's status
codes, so the official SDK raises the error class a script expects (BadRequestError, AuthenticationError,
NotFoundError, ...). Every `/v1` route shares this: the handlers installed here answer `/v1` paths in this shape
and leave every other path to loradeck's own handlers (app.web.errors); the security and body-limit middlewares
refuse `/v1` requests with `refusal_body`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from app.errors import Conflict, DomainError, InputTooLarge, InvalidInput, NotFound, Refused, Unavailable

PREFIX = "/v1"
Handler = Callable[[Request, Exception], Awaitable[Response]]
# loradeck's messages name the field they are about first ("file: the file is empty"): that field is `param`.
LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*(?:\[[a-z0-9_]+\])*): ")
TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_exceeded"}  # fmt: skip
CODES = {401: "invalid_api_key", 413: "file_too_large"}


class OpenAIError(Exception):
    """A `/v1` refusal with everything OpenAI's error body holds; routes raise it where the domain's error
    kinds do not say enough (which parameter, which code)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or error_type(status)


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_type(status: int) -> str:
    return TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def leading_field(message: str) -> str | None:
    match = LEADING_FIELD.match(message)
    return match.group(1) if match else None


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None, type: str = ""
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type or error_type(status),
            "param": param if param is not None else leading_field(message),
            "code": code if code is not None else CODES.get(status),
        }
    }


def error_response(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(status, message, **fields))


def refusal_body(path: str, status: int, message: str) -> bytes:
    """A middleware's refusal (Host, CSRF, login, body size): OpenAI's shape under `/v1`, `{"detail"}` elsewhere."""
    return json.dumps(error_body(status, message) if is_openai_path(path) else {"detail": message}).encode()


# OpenAI answers a body it cannot use with 400 (loradeck: 422), and has no 409 for a file.
DOMAIN_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (InputTooLarge, 413),
    (InvalidInput, 400),
    (Refused, 400),
    (Unavailable, 503),
)


def domain_message(exc: DomainError) -> str:
    """The message, with the findings it stands for (a dataset's bad rows, by line) written into it: OpenAI's
    error has one message, and the first bad lines are what a user must see."""
    message = str(exc)
    if isinstance(exc, InvalidInput) and exc.problems:
        shown = exc.problems[:10]
        more = f" (and {len(exc.problems) - len(shown)} more)" if len(exc.problems) > len(shown) else ""
        message = f"{message}: " + "; ".join(shown) + more
    return message


def domain_param(exc: DomainError) -> str | None:
    if isinstance(exc, InvalidInput) and exc.errors and exc.errors[0].get("loc"):
        return ".".join(str(part) for part in exc.errors[0]["loc"])
    return getattr(exc, "param", None) or leading_field(str(exc))


def install(app: FastAPI) -> None:
    """Answer `/v1` paths in OpenAI's shape; every other path as before (call after app.web.errors.install)."""
    previous: dict[Any, Handler] = dict(app.exception_handlers)  # type: ignore[arg-type]

    def scoped(kind: type[Exception], handler: Callable[[Request, Any], Response]) -> None:
        fallback = previous.get(kind)

        async def handle(request: Request, exc: Exception) -> Response:
            if is_openai_path(request.url.path) or fallback is None:
                return handler(request, exc)
            return await fallback(request, exc)

        app.add_exception_handler(kind, handle)

    scoped(OpenAIError, lambda _, exc: error_response(exc.status, exc.message, param=exc.param, code=exc.code))
    scoped(DomainError, _domain_error)
    scoped(RequestValidationError, _validation_error)
    scoped(HTTPException, _http_error)


def _domain_error(_: Request, exc: DomainError) -> Response:
    status = next((status for kind, status in DOMAIN_STATUS if isinstance(exc, kind)), 500)
    return error_response(status, domain_message(exc), param=domain_param(exc))


def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid request"))
    return error_response(400, f"{param}: {message}" if param else message, param=param)


def _http_error(request: Request, exc: HTTPException) -> Response:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method not allowed ({request.method} {request.url.path})"
    return error_response(exc.status_code, message, param=leading_field(message))
