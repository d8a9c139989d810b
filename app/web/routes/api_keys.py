"""API keys for `/v1` with login on: the settings page that creates, lists and revokes them.

The forms are plain posts: the security middleware refuses them from another site (Sec-Fetch-Site, Origin) and,
with login on, without the admin's session, as it does every page's forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.models import ApiKey
from app.services import api_keys
from app.web.deps import SessionDep, render
from app.web.errors import field_messages

router = APIRouter(include_in_schema=False)
PAGE = "/settings/keys"


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    key: str  # shown on this one answer, then gone


def keys_page(
    request: Request,
    session: Session,
    *,
    created: CreatedKey | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    context = {"keys": api_keys.list_keys(session=session), "created": created, "error": error}
    return render(request, "api_keys.html", context, status)


@router.get(PAGE, response_class=HTMLResponse)
def list_page(request: Request, session: SessionDep) -> HTMLResponse:
    """The keys: name, prefix, created, last used, revoked; a form to create one."""
    return keys_page(request, session)


@router.post(PAGE, response_class=HTMLResponse)
def create(request: Request, session: SessionDep, name: Annotated[str, Form()] = "") -> HTMLResponse:
    """Create a key and show it, once: this answer is the only place it is ever shown (and is not cached)."""
    try:
        row, key = api_keys.create_key(session=session, name=name)
    except InvalidInput as exc:
        return keys_page(request, session, error=field_messages(exc).get("name", str(exc)), status=422)
    response = keys_page(request, session, created=CreatedKey(row, key), status=201)
    response.headers["cache-control"] = "no-store"
    return response


@router.post(PAGE + "/{key_id}/revoke")
def revoke(key_id: str, session: SessionDep) -> RedirectResponse:
    """Revoke a key: the next request with it is refused with 401."""
    api_keys.revoke_key(session=session, key_id=key_id)
    return RedirectResponse(PAGE, status_code=303)
