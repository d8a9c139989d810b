"""Who may use loradeck, and what every response says to the browser.

- A request whose Host is not a loopback name, an IP address or an allowed host is refused first, in every
  mode: a page on another site that rebinds its name to 127.0.0.1 sends its own name (DNS rebinding).
- Listening on loopback only (the default) nobody logs in, unless `require_login` is set. Listening on any
  other address (decided from the sockets actually bound, app.web.binding), pages need the admin password (a
  signed session cookie, revoked by logout and by a new password) and the JSON API an API token.
- With login on, OpenAI's API under `/v1` takes only API keys (app.services.api_keys: made on /settings/keys or
  by `loradeck keys create`), not the session cookie nor the `/api/v1` tokens: scripts hold keys, and a key
  can be revoked alone. Without login, any bearer (or none) is accepted there, as for the rest of the app.
- Cross-site form posts are refused (CSRF) by the browser's own Sec-Fetch-Site / Origin headers, which
  a page on another site cannot forge; requests with an API token carry no ambient credential.
- Every response carries security headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.services import api_keys
from app.web.binding import listening_addresses
from app.web.openai_errors import is_openai_path, refusal_body

log = logging.getLogger(__name__)

SESSION_COOKIE = "loradeck_session"
SESSION_SECONDS = 14 * 24 * 3600
OPEN_PATHS = ("/login", "/static/", "/healthz")
Refusal = tuple[int, str, list[Any]]  # status, message, extra headers
HOW_TO_GET_A_KEY = "create one on the /settings/keys page or with `loradeck keys create`"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(:\d{1,5})?$")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    ),
]


# --- passwords and tokens


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt, with its parameters in the string: `scrypt$n$r$p$salt$hash`."""
    salt = salt or secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


def new_api_token() -> tuple[str, str]:
    """A fresh API token and the sha256 digest to put in `api_token_hashes`."""
    token = "ld_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def token_is_valid(token: str, settings: Settings) -> bool:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return any(hmac.compare_digest(digest, allowed) for allowed in settings.api_token_hashes)


# --- sessions


def secret_key(settings: Settings) -> bytes:
    """The key that signs session cookies, made once and kept in the data dir (readable by its owner only)."""
    path = settings.data_dir / "secret_key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return bytes.fromhex(Path(path).read_text().strip())


def session_epoch(settings: Settings) -> int:
    """The server-side session generation: a cookie made in an older one is no longer valid."""
    try:
        return int((settings.data_dir / "session_epoch").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def revoke_sessions(settings: Settings) -> None:
    """Log every session out (logout: there is one admin): bump the epoch, kept in the data dir."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "session_epoch"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(session_epoch(settings) + 1))
    temporary.replace(path)


def _signing_key(settings: Settings) -> bytes:
    # Keyed by the password hash too: a new admin password invalidates every session made with the old one.
    return hmac.new(secret_key(settings), b"session:" + settings.admin_password_hash.encode(), hashlib.sha256).digest()


def make_session(settings: Settings) -> str:
    claims = {"exp": int(time.time()) + SESSION_SECONDS, "epoch": session_epoch(settings)}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
    signature = hmac.new(_signing_key(settings), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{signature}"


def session_is_valid(cookie: str, settings: Settings) -> bool:
    payload, _, signature = cookie.partition(".")
    expected = hmac.new(_signing_key(settings), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        return False
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
        return int(claims["exp"]) > time.time() and int(claims["epoch"]) == session_epoch(settings)
    except (ValueError, KeyError, TypeError):
        return False


# --- where it listens, and which names it answers to


def is_loopback(host: str) -> bool:
    """Whether an address to bind is loopback-only; an empty host listens on every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_bound: list[str] = []


def bound_addresses() -> list[str]:
    """The addresses this process listens on, read once they are known (the first request comes after them)."""
    if not _bound:
        _bound.extend(listening_addresses())
        if _bound and not all(is_loopback(address) for address in _bound):
            log.warning("listening on %s: pages and the API need a login", ", ".join(_bound))
    return _bound


def login_required(settings: Settings) -> bool:
    """Unless both the host setting and every socket actually bound are loopback-only (`uvicorn --host 0.0.0.0`
    bypasses the setting; an empty host listens everywhere)."""
    addresses = [settings.host, *bound_addresses()]
    return settings.require_login or not all(is_loopback(address) for address in addresses)


def host_name(header: str) -> str | None:
    """The name in a Host header, without its port and brackets, lowercased; None when malformed."""
    match = HOST_HEADER.match(header.strip())
    if not match or not match.group(1):
        return None
    return match.group(1).strip("[]").rstrip(".").lower()


def host_is_allowed(header: str, settings: Settings) -> bool:
    """Loopback names, IP addresses (a rebinding page can only send its own name) and the allowed hosts."""
    name = host_name(header)
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    allowed = {host.lower().rstrip(".") for host in settings.allowed_hosts}
    return "*" in allowed or name in allowed


def login_problem(settings: Settings) -> str | None:
    """Why the web app must not start as configured, or None."""
    if login_required(settings) and not settings.admin_password_hash:
        return (
            f"loradeck is bound to {settings.host or 'every interface'}, so it needs a login: "
            "set LORADECK_ADMIN_PASSWORD_HASH (make one with `loradeck hash-password`), or bind to 127.0.0.1"
        )
    return None


# --- the middleware


class SecurityMiddleware:
    """Security headers on every response; CSRF refusal; login where it is required."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        settings = get_settings()
        refusal = await self._refusal(scope, headers, settings)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                present = {name.lower() for name, _ in message["headers"]}
                message["headers"] += [(name, value) for name, value in HEADERS if name not in present]
            await send(message)

        if refusal is not None:
            status, body, extra = refusal
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*extra, (b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": refusal_body(scope["path"], status, body)})
            return
        await self.app(scope, receive, send_with_headers)

    async def _refusal(self, scope: Scope, headers: dict[str, str], settings: Settings) -> Refusal | None:
        path: str = scope["path"]
        host = headers.get("host", "")
        if not host_is_allowed(host, settings):
            return (
                400,
                f"Host {host or '(none)'} is not one this server answers to: open it by a loopback name or its "
                "IP address, or add the name to LORADECK_ALLOWED_HOSTS",
                [],
            )
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        if scope["method"] in UNSAFE_METHODS and not token:
            site = headers.get("sec-fetch-site")
            origin = headers.get("origin")
            if site is not None and site not in ("same-origin", "none"):
                return 403, f"cross-site request refused (Sec-Fetch-Site: {site})", []
            # "null" is what a sandboxed frame, a data: URL or a cross-site redirect sends: never this site.
            if origin == "null":
                return 403, "cross-origin request refused (Origin: null)", []
            if origin and origin.split("://", 1)[-1] != host:
                return 403, f"cross-origin request refused (Origin: {origin})", []
        if not login_required(settings) or path.startswith(OPEN_PATHS):
            return None
        if is_openai_path(path):
            return await api_key_refusal(token)
        if token:
            return None if token_is_valid(token, settings) else (401, "this API token is not valid", [])
        cookie = SimpleCookie(headers.get("cookie", "")).get(SESSION_COOKIE)
        if cookie is not None and session_is_valid(cookie.value, settings):
            return None
        if path.startswith("/api/"):
            return 401, "log in: send an API token as `Authorization: Bearer <token>`", []
        target = quote(path + ("?" + scope["query_string"].decode() if scope["query_string"] else ""))
        return 303, "log in first", [(b"location", f"/login?next={target}".encode())]


def _verify_api_key(key: str) -> api_keys.Verdict:
    with get_sessionmaker()() as session:
        return api_keys.verify_key(session=session, key=key)


async def api_key_refusal(key: str) -> Refusal | None:
    """None when `key` is a live API key; else the 401 to answer. Anything that cannot be a key is refused
    here; a key is looked up (one indexed read, a write at most once a minute) in a worker thread, so the
    event loop keeps serving while the database answers."""
    if not key:
        return 401, f"send an API key as `Authorization: Bearer <key>`; {HOW_TO_GET_A_KEY}", []
    if not api_keys.could_be_key(key):
        return 401, f"this is not a loradeck API key (`{api_keys.KEY_START}...`); {HOW_TO_GET_A_KEY}", []
    verdict = await run_in_threadpool(_verify_api_key, key)
    return None if verdict.key is not None else (401, verdict.problem, [])
