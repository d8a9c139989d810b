"""What the domain refuses, by kind. Services raise these; the HTTP layer maps each kind to a status in one
handler (app.web.errors), and the CLI prints their messages. Every message names what to fix."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request loradeck refuses; the message says why and what to do instead."""


class NotFound(DomainError, LookupError):
    """No such run, artifact, dataset or playground request."""


class Conflict(DomainError):
    """The request does not fit the current state (a run still training, a merge before the adapter)."""


class InvalidInput(DomainError, ValueError):
    """Input that cannot be used. `errors` lists problems by field in pydantic's shape (`loc`, `msg`, `type`),
    so a refused spec reads like a refused request body; `problems` lists other findings (a dataset's bad rows)."""

    def __init__(
        self, message: str = "", *, errors: list[dict[str, Any]] | None = None, problems: list[str] | None = None
    ) -> None:
        self.errors = errors or []
        self.problems = problems or []
        super().__init__(message or "; ".join(field_message(error) for error in self.errors))

    @classmethod
    def fields(cls, problems: dict[str, str]) -> InvalidInput:
        """One problem per field, each message starting with its field's name."""
        return cls(errors=[field_error(name, message) for name, message in problems.items()])


class InputTooLarge(InvalidInput):
    """Input past a size limit (an upload); the message names the limit and its setting."""


class Refused(DomainError):
    """A worker looked at the request and refused it (an estimate it cannot make), saying why."""


class Unavailable(DomainError):
    """A part loradeck needs is unreachable (Redis, the task queue, an inspect worker); the message names it."""


def field_error(field: str, message: str) -> dict[str, Any]:
    """A problem with one field, in pydantic's error shape (as a refused request body lists them)."""
    return {"type": "value_error", "loc": [field] if field else [], "msg": f"Value error, {message}"}


def field_message(error: dict[str, Any]) -> str:
    """`field: message` from a pydantic-shaped error (messages of cross-field rules already start with a field)."""
    field = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return message if not field or message.startswith(field) else f"{field}: {message}"
