"""API keys for OpenAI's API under /v1: made by `loradeck keys create` or on the settings page, shown once, stored
hashed, revocable, with a last-used time. Driven by the official `openai` SDK against uvicorn with login on (only
a live key is let through; everything else is 401 in OpenAI's shape) and on the loopback default (any key)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import openai
import pytest

from app.processes import free_port
from app.web.security import hash_password, new_api_token
from tests.conftest import stack_env
from tests.openai_sdk import client
from tests.processes import REPO, Processes

PASSWORD = "a long admin password"
KEY = re.compile(r"ldk-[A-Za-z0-9_-]{43}")


@dataclass
class Servers:
    url: str  # loopback, no login: any key is accepted
    login_url: str  # the same data, with login on
    env: dict[str, str]  # the login server's, for `loradeck keys` in a subprocess
    token: str  # an /api/v1 token the login server allows


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_database_url: str) -> Iterator[Servers]:
    """Two web apps on one data dir and database, one of them with login on (and an /api/v1 token allowed)."""
    root = tmp_path_factory.mktemp("keys")
    port, login_port = free_port(), free_port()
    env = stack_env(root / "data", redis_url, module_database_url, port)
    token, digest = new_api_token()
    login_env = env | {
        "LORADECK_REQUIRE_LOGIN": "true",
        "LORADECK_ADMIN_PASSWORD_HASH": hash_password(PASSWORD),
        "LORADECK_API_TOKEN_HASHES": digest,
    }
    processes, login = Processes(root, env), Processes(root, login_env)
    processes.migrate()
    try:
        processes.start_web(port, log="web.log")
        login.start_web(login_port, log="web.log")
        yield Servers(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{login_port}", login_env, token)
    finally:
        login.close()
        processes.close()


def keys(servers: Servers, *args: str) -> subprocess.CompletedProcess[str]:
    """`loradeck keys ARGS` as an operator runs it, on the servers' database."""
    command = [sys.executable, "-m", "app.cli", "keys", *args]
    return subprocess.run(command, env=servers.env, cwd=REPO, capture_output=True, text=True, timeout=120)


def created_key(servers: Servers, name: str) -> tuple[str, str]:
    """A new key's id and the key itself, as `loradeck keys create` prints them."""
    out = keys(servers, "create", "--name", name)
    assert out.returncode == 0, out.stderr
    found = re.search(rf"API key (\w+) \({re.escape(name)}\)", out.stdout)
    key = KEY.search(out.stdout)
    assert found and key, out.stdout
    return found.group(1), key.group(0)


def listed(servers: Servers) -> dict[str, list[str]]:
    """`loradeck keys list`, by id: the row's columns (name, prefix, created, last used, revoked)."""
    out = keys(servers, "list")
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def test_a_created_key_reaches_v1_and_its_use_is_recorded(servers: Servers) -> None:
    key_id, key = created_key(servers, "ci-finetune")
    name, prefix, created, last_used, revoked = listed(servers)[key_id]
    assert (name, prefix, last_used, revoked) == ("ci-finetune", key[:12] + "...", "-", "-")
    assert created.endswith(" UTC")

    files = client(servers.login_url, key).files.list()
    assert files.object == "list" and isinstance(files.data, list)  # (uploads: tests/app/test_openai_files.py)
    assert listed(servers)[key_id][3].endswith(" UTC")  # last used: now set
    assert key not in keys(servers, "list").stdout  # the key itself is never shown again


def test_without_a_live_key_v1_is_401_in_openai_shape(servers: Servers) -> None:
    bare = httpx.get(servers.login_url + "/v1/files")
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "invalid_request_error" and bare.json()["error"]["code"] == "invalid_api_key"
    assert "loradeck keys create" in bare.json()["error"]["message"]
    unknown = "ldk-" + "x" * 43  # a key's form, never made here
    for wrong in ("sk-not-a-loradeck-key", unknown, servers.token):
        with pytest.raises(openai.AuthenticationError) as refused:
            client(servers.login_url, wrong).files.list()
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key", wrong
    # The /api/v1 token still opens /api/v1 (only /v1 is for keys).
    bearer = {"Authorization": f"Bearer {servers.token}"}
    assert httpx.get(servers.login_url + "/api/v1/datasets", headers=bearer).status_code == 200


def test_a_revoked_key_is_refused_from_the_next_request(servers: Servers) -> None:
    key_id, key = created_key(servers, "to-revoke")
    sdk = client(servers.login_url, key)
    sdk.files.list()
    out = keys(servers, "revoke", key_id)
    assert out.returncode == 0 and f"revoked {key_id}" in out.stdout
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk.files.list()
    assert "revoked" in refused.value.body["message"] and key[:12] in refused.value.body["message"]
    assert listed(servers)[key_id][4].endswith(" UTC")  # revoked: when
    missing = keys(servers, "revoke", "nosuchkey")
    assert missing.returncode == 1 and "no API key with id nosuchkey" in missing.stderr


def test_on_the_loopback_default_any_key_is_accepted(servers: Servers) -> None:
    key_id, key = created_key(servers, "revoked-but-loopback")
    assert keys(servers, "revoke", key_id).returncode == 0
    for anything in ("sk-anything", key):
        assert isinstance(client(servers.url, anything).files.list().data, list)
    assert httpx.get(servers.url + "/v1/files").status_code == 200


def log_in(url: str) -> httpx.Client:
    browser = httpx.Client(
        base_url=url, follow_redirects=True, headers={"Origin": url, "Sec-Fetch-Site": "same-origin"}
    )
    answer = browser.post("/login", data={"password": PASSWORD, "next": "/settings/keys"})
    assert answer.status_code == 200 and answer.url.path == "/settings/keys"
    return browser


def test_the_settings_page_creates_shows_once_lists_and_revokes(servers: Servers) -> None:
    anonymous = httpx.get(servers.login_url + "/settings/keys", follow_redirects=True)
    assert anonymous.url.path == "/login"  # login required, as for every page
    browser = log_in(servers.login_url)
    created = browser.post("/settings/keys", data={"name": "from-the-page"})
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    shown = KEY.findall(created.text)
    assert len(set(shown)) == 1 and "not shown again" in created.text
    key = shown[0]
    assert client(servers.login_url, key).files.list() is not None

    page = browser.get("/settings/keys")
    assert "from-the-page" in page.text and key[:12] + "…" in page.text and key not in page.text
    assert KEY.search(page.text) is None  # no key in the list, only prefixes
    key_id = re.search(r'action="/settings/keys/(\w+)/revoke"', page.text)
    assert key_id  # the newest key first
    # The browser's session is not a key: /v1 with only the cookie is refused.
    assert browser.get("/v1/files").status_code == 401

    revoked = browser.post(f"/settings/keys/{key_id.group(1)}/revoke")
    assert revoked.status_code == 200 and revoked.url.path == "/settings/keys"
    assert f'action="/settings/keys/{key_id.group(1)}/revoke"' not in revoked.text
    with pytest.raises(openai.AuthenticationError):
        client(servers.login_url, key).files.list()


def test_the_settings_page_refuses_cross_site_posts(servers: Servers) -> None:
    browser = log_in(servers.login_url)
    before = browser.get("/settings/keys").text.count("<tr id=")
    key_id, key = created_key(servers, "kept")
    for forged in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        made = browser.post("/settings/keys", data={"name": "forged"}, headers=forged)
        assert made.status_code == 403 and "refused" in made.json()["detail"]
        assert browser.post(f"/settings/keys/{key_id}/revoke", headers=forged).status_code == 403
    page = browser.get("/settings/keys").text
    assert "forged" not in page and page.count("<tr id=") == before + 1
    assert client(servers.login_url, key).files.list() is not None  # still live
    too_long = browser.post("/settings/keys", data={"name": "n" * 201})
    assert too_long.status_code == 422 and "at most 200 characters" in too_long.text and not KEY.search(too_long.text)


def test_keys_are_stored_hashed_and_last_used_is_written_at_most_once_a_minute(loradeck_env: dict[str, str]) -> None:
    from app.db import get_sessionmaker
    from app.models import ApiKey
    from app.services import api_keys

    with get_sessionmaker()() as session:
        row, key = api_keys.create_key(session=session, name="  busy client ")
        stored = session.get(ApiKey, row.id)
        assert stored is not None and stored.name == "busy client" and key not in (stored.prefix, stored.key_sha256)
        assert stored.key_sha256 == hashlib.sha256(key.encode()).hexdigest() and key.startswith(stored.prefix)
        start = api_keys.aware(stored.created_at) + timedelta(seconds=1)
        uses = [start, start + timedelta(seconds=30), start + timedelta(seconds=59), start + timedelta(seconds=61)]
        seen = []
        for moment in uses:
            assert api_keys.verify_key(session=session, key=key, now=moment).key is not None
            session.expire_all()
            last = session.get(ApiKey, row.id).last_used_at  # type: ignore[union-attr]
            seen.append(api_keys.aware(last) if last else None)
        assert seen == [start, start, start, uses[3]]
        assert api_keys.verify_key(session=session, key=key[:-1] + "?", now=start).key is None
        api_keys.revoke_key(session=session, key_id=row.id)
        assert "revoked" in api_keys.verify_key(session=session, key=key).problem
