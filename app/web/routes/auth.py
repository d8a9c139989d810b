"""Log in with the admin password (only asked for where login is required), and log out."""

from __future__ import annotations

import time
from collections import deque
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.web.deps import SettingsDep, templates
from app.web.security import SESSION_COOKIE, SESSION_SECONDS, make_session, revoke_sessions, verify_password

router = APIRouter(include_in_schema=False)

FREE_TRIES = 5  # wrong passwords from one address before it has to wait
WINDOW_S = 15 * 60  # a wrong password counts for this long
MAX_WAIT_S = 300


class LoginThrottle:
    """Wrong passwords per client address: after FREE_TRIES, each further try waits twice as long as the last."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}

    def wait_s(self, address: str, now: float) -> float:
        """Seconds this address must wait before its next try (0: it may try now)."""
        recent = self.failures.get(address)
        if recent is None:
            return 0.0
        while recent and recent[0] < now - WINDOW_S:
            recent.popleft()
        if len(recent) < FREE_TRIES:
            return 0.0
        wait = min(MAX_WAIT_S, 2.0 ** (len(recent) - FREE_TRIES))
        return max(0.0, recent[-1] + wait - now)

    def failed(self, address: str, now: float) -> None:
        if len(self.failures) > 10_000:  # many addresses: forget the stalest rather than grow without end
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(address, deque(maxlen=64)).append(now)

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)


throttle = LoginThrottle()


def _safe_next(target: str) -> str:
    # Only paths on this site: never an open redirect to another host.
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    """The login form."""
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_model=None)
def login(
    request: Request, settings: SettingsDep, password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"
) -> Response:
    """Check the password; on success set the session cookie and go on."""
    address, now = request.client.host if request.client else "", time.monotonic()
    wait = throttle.wait_s(address, now)
    if wait:
        context = {"next": _safe_next(next), "error": f"Too many wrong passwords: try again in {wait:.0f} s."}
        headers = {"Retry-After": str(int(wait) + 1)}
        return templates.TemplateResponse(request, "login.html", context, status_code=429, headers=headers)
    if not settings.admin_password_hash or not verify_password(password, settings.admin_password_hash):
        throttle.failed(address, now)
        error = "That password is not right."
        if not settings.admin_password_hash:
            error = "No admin password is set: set LORADECK_ADMIN_PASSWORD_HASH (`loradeck hash-password`)."
        context = {"next": _safe_next(next), "error": error}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    throttle.succeeded(address)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        make_session(settings),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure or request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(settings: SettingsDep) -> RedirectResponse:
    """Forget the session, here and on the server: the same cookie no longer logs anyone in."""
    revoke_sessions(settings)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
