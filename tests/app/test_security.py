"""Security: headers everywhere, cross-site posts refused, login beyond loopback, paths inside the roots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.security import hash_password, new_api_token, verify_password


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
