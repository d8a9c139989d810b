"""Security: headers everywhere, foreign Hosts and cross-site posts refused, login wherever the socket is not
loopback-only, sessions revoked by logout and a new password, paths inside the roots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.processes import free_port
from app.web.security import SESSION_COOKIE, hash_password, new_api_token, verify_password

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def _runs(client: TestClient) -> list[dict]:
    return client.get("/api/v1/runs").json()  # type: ignore[no-any-return]


def test_every_response_carries_security_headers(client: TestClient) -> None:
    for path in ("/", "/runs/new", "/api/v1/runs", "/static/css/loradeck.css", "/no/such/page", "/healthz"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["referrer-policy"] == "same-origin", path


def test_cross_site_posts_are_refused_and_change_nothing(client: TestClient) -> None:
    attempts = [
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://sub.testserver"},
    ]
    for headers in attempts:
        response = client.post("/runs", data={"name": "forged"}, headers=headers, follow_redirects=False)
        assert response.status_code == 403, headers
        assert "refused" in response.json()["detail"]
        api = client.post("/api/v1/runs", json={"name": "forged"}, headers=headers)
        assert api.status_code == 403
    assert _runs(client) == []
    same = client.post(
        "/runs", data={"name": "mine"}, headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )  # fmt: skip
    assert same.status_code == 303
    assert [run["name"] for run in _runs(client)] == ["mine"]


def test_every_route_that_changes_something_refuses_a_cross_site_request(client: TestClient) -> None:
    """Not only the forms above: every POST/PUT/PATCH/DELETE the app serves (the exports, merges, uploads and
    any route added later) is refused from another site before it reads its input."""
    import importlib
    import pkgutil
    import re

    from fastapi.routing import APIRoute

    import app.web.routes

    modules = [
        importlib.import_module(f"app.web.routes.{m.name}") for m in pkgutil.iter_modules(app.web.routes.__path__)
    ]
    unsafe = [
        (method, re.sub(r"\{[^}]+\}", "x", route.path))
        for module in modules
        for route in module.router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods & {"POST", "PUT", "PATCH", "DELETE"})
    ]
    assert ("POST", "/api/v1/runs/x/export") in unsafe and ("POST", "/runs/x/export") in unsafe
    for method, path in unsafe:
        response = client.request(method, path, headers={"Origin": "http://evil.example"}, follow_redirects=False)
        assert response.status_code == 403, (method, path, response.status_code)


def test_passwords_are_hashed_with_scrypt() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("wrong horse battery", stored)
    assert not verify_password("anything", "garbage")


def test_beyond_loopback_pages_need_login_and_the_api_a_token(
    loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token, digest = new_api_token()
    monkeypatch.setenv("LORADECK_HOST", "0.0.0.0")
    monkeypatch.setenv("LORADECK_ADMIN_PASSWORD_HASH", hash_password("a long admin password"))
    monkeypatch.setenv("LORADECK_API_TOKEN_HASHES", f"{'0' * 64},{digest}")
    from app.config import get_settings

    get_settings.cache_clear()
    from app.main import app

    with TestClient(app) as client:
        page = client.get("/runs/new?x=1", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/runs/new%3Fx%3D1"
        assert client.get("/api/v1/runs").status_code == 401
        assert client.get("/api/v1/runs", headers={"Authorization": "Bearer ld_wrong"}).status_code == 401
        assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/login").status_code == 200
        wrong = client.post("/login", data={"password": "guess", "next": "/"})
        assert wrong.status_code == 401 and "not right" in wrong.text
        right = client.post(
            "/login", data={"password": "a long admin password", "next": "//evil.example/"}, follow_redirects=False
        )
        assert right.status_code == 303 and right.headers["location"] == "/"
        assert (
            "httponly" in right.headers["set-cookie"].lower()
            and "samesite=strict" in right.headers["set-cookie"].lower()
        )
        assert client.get("/runs/new").status_code == 200
        client.post("/logout")
        assert client.get("/runs/new", follow_redirects=False).status_code == 303
    get_settings.cache_clear()


def test_binding_beyond_loopback_without_a_password_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "web", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "LORADECK_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode != 0
    assert "needs a login: set LORADECK_ADMIN_PASSWORD_HASH" in result.stderr


def test_paths_outside_the_allowed_roots_are_refused(client: TestClient) -> None:
    outside = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        (outside / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (outside / "secret.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
        response = client.post(
            "/api/v1/runs", json={"base_model": str(outside), "dataset": str(outside / "secret.jsonl")}
        )
        assert response.status_code == 422
        fields = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
        assert "outside the model directories" in fields[("body", "base_model")]
        assert "outside the dataset directories" in fields[("body", "dataset")]
        form = client.post("/runs", data={"dataset": str(outside / "secret.jsonl")}, headers={"HX-Request": "true"})
        assert form.status_code == 422 and 'data-field="dataset"' in form.text
        assert _runs(client) == []
    finally:
        shutil.rmtree(outside)


# --- DNS rebinding: only loopback names, IP addresses and the allowed hosts are served


def test_a_foreign_host_is_refused_before_anything_happens(client: TestClient) -> None:
    for host in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80", ""):
        headers = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        listed = client.get("/api/v1/runs", headers=headers)
        assert listed.status_code == 400 and "LORADECK_ALLOWED_HOSTS" in listed.json()["detail"], host
        created = client.post("/api/v1/runs", json={"name": "rebound", "max_steps": 5}, headers=headers)
        assert created.status_code == 400, host
        form = client.post("/runs", data={"name": "rebound"}, headers=headers, follow_redirects=False)
        assert form.status_code == 400, host
        assert client.get("/", headers=headers).status_code == 400, host
    assert _runs(client) == []


def test_loopback_names_and_addresses_are_served(client: TestClient) -> None:
    for host in ("localhost:8000", "LOCALHOST", "127.0.0.1:8000", "127.0.0.1", "[::1]:8000", "app.localhost:8000",
                 "192.168.1.5:8000", "testserver"):  # fmt: skip
        assert client.get("/api/v1/runs", headers={"Host": host}).status_code == 200, host
        origin = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        created = client.post("/api/v1/runs", json={"name": f"via {host}", "max_steps": 5}, headers=origin)
        assert created.status_code == 201, (host, created.text)
    assert len(_runs(client)) == 8


def test_allowed_hosts_setting_admits_a_proxy_name(
    loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORADECK_ALLOWED_HOSTS", "testserver, loradeck.example.org")
    from app.config import get_settings

    get_settings.cache_clear()
    from app.main import app

    with TestClient(app) as client:
        assert client.get("/api/v1/runs", headers={"Host": "loradeck.example.org"}).status_code == 200
        assert client.get("/api/v1/runs", headers={"Host": "other.example.org"}).status_code == 400
    get_settings.cache_clear()


def test_a_post_with_origin_null_is_refused(client: TestClient) -> None:
    response = client.post("/api/v1/runs", json={"name": "sandboxed", "max_steps": 5}, headers={"Origin": "null"})
    assert response.status_code == 403 and "Origin: null" in response.json()["detail"]
    assert _runs(client) == []


# --- login follows the socket actually bound


def _serve(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the web app did not start: {process.communicate()[0][-3000:]}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_a_bare_uvicorn_on_every_interface_demands_login(loradeck_env: dict[str, str]) -> None:
    port = free_port()
    env = {**os.environ, "LORADECK_HOST": "127.0.0.1"}  # the setting says loopback; the socket does not
    web = _serve([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", str(port)], env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/api/v1/runs").status_code == 401
        page = httpx.get(url + "/runs/new")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        created = httpx.post(url + "/api/v1/runs", json={"name": "no login", "max_steps": 5})
        assert created.status_code == 401
    finally:
        _stop(web)


def test_an_empty_host_demands_login(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LORADECK_HOST": ""}
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "web", "--port", str(port)], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "needs a login: set LORADECK_ADMIN_PASSWORD_HASH" in refused.stderr
    env["LORADECK_ADMIN_PASSWORD_HASH"] = hash_password("a long admin password")
    web = _serve([sys.executable, "-m", "app.cli", "web", "--port", str(port)], env, port)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/runs").status_code == 401
    finally:
        _stop(web)


# --- sessions and passwords


@pytest.fixture
def login_client(loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("LORADECK_REQUIRE_LOGIN", "true")
    monkeypatch.setenv("LORADECK_ADMIN_PASSWORD_HASH", hash_password("a long admin password"))
    from app.config import get_settings
    from app.web.routes.auth import throttle

    get_settings.cache_clear()
    from app.main import app

    with TestClient(app) as client:
        yield client
    throttle.failures.clear()
    get_settings.cache_clear()


def _log_in(client: TestClient, password: str = "a long admin password") -> httpx.Response:
    return client.post("/login", data={"password": password, "next": "/"}, follow_redirects=False)


def test_wrong_passwords_in_a_row_are_throttled(login_client: TestClient) -> None:
    answers = [_log_in(login_client, f"guess {n}").status_code for n in range(30)]
    assert answers[:5] == [401] * 5 and answers.count(429) >= 24
    held = _log_in(login_client)  # even the right one waits its turn
    assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1 and "try again" in held.text


def test_logout_revokes_the_session_cookie(login_client: TestClient) -> None:
    assert _log_in(login_client).status_code == 303
    cookie = login_client.cookies[SESSION_COOKIE]
    assert login_client.get("/runs/new").status_code == 200
    login_client.post("/logout")
    login_client.cookies.set(SESSION_COOKIE, cookie)  # the old cookie, replayed
    assert login_client.get("/runs/new", follow_redirects=False).status_code == 303


def test_a_new_password_revokes_old_sessions(login_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    assert _log_in(login_client).status_code == 303
    assert login_client.get("/runs/new").status_code == 200
    monkeypatch.setenv("LORADECK_ADMIN_PASSWORD_HASH", hash_password("another long password"))
    get_settings.cache_clear()
    assert login_client.get("/runs/new", follow_redirects=False).status_code == 303


def test_cookie_secure_setting_marks_the_cookie(login_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    assert "secure" not in _log_in(login_client).headers["set-cookie"].lower()
    monkeypatch.setenv("LORADECK_COOKIE_SECURE", "true")
    get_settings.cache_clear()
    assert "; secure" in _log_in(login_client).headers["set-cookie"].lower()
