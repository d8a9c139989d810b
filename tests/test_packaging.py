"""A web-only install: `pip install '.[web]'` into a fresh virtual environment, not editable and with no ML library,
serves the app from anywhere; its pages, static files and migrations come from the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.processes import free_port
from tests.processes import wait_http

REPO = Path(__file__).resolve().parent.parent
ML_LIBRARIES = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "tokenizers"}


@pytest.mark.slow
def test_a_web_only_install_serves_the_app_without_torch(tmp_path: Path, redis_url: str) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # From a copy of what git has (tracked, or new and not ignored): an in-tree build would reuse a stale build/.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    for name in tracked.stdout.split():
        wanted = name.startswith(("app/", "worker/")) or name in ("pyproject.toml", "README.md")
        if wanted and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    install = [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), f"{source}[web]"]
    subprocess.run(install, check=True, timeout=900, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True)
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "loradeck" in installed and "fastapi" in installed
    assert not installed & ML_LIBRARIES, f"a web-only install brought {installed & ML_LIBRARIES}"

    elsewhere = tmp_path / "elsewhere"  # not the checkout: only the installed package can be imported
    elsewhere.mkdir()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("LORADECK_", "PYTHON", "VIRTUAL_ENV"))
    }
    port = free_port()
    env |= {
        "LORADECK_DATA_DIR": str(elsewhere / "data"),
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/14",
        "DATABASE_URL": "",
        "LORADECK_ASSETS_DIR": str(REPO / "assets"),  # as the web image puts them beside the install
    }
    where = subprocess.run(
        [str(python), "-c", "import app; print(app.__file__)"], cwd=elsewhere, env=env, check=True, capture_output=True
    )
    assert Path(where.stdout.decode().strip()).is_relative_to(venv), "the app must come from the installed package"
    subprocess.run([str(venv / "bin" / "loradeck"), "migrate"], cwd=elsewhere, env=env, check=True, timeout=120)
    serve = [str(python), "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    web = subprocess.Popen(serve, cwd=elsewhere, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, web)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").json()["ok"] is True  # the migrated database and Redis
            runs = client.get("/")
            assert runs.status_code == 200 and "New run" in runs.text  # a template from the package
            form = client.get("/runs/new")
            assert form.status_code == 200 and 'name="base_model"' in form.text
            assert client.get("/static/css/loradeck.css").status_code == 200
            assert client.get("/static/js/run.js").status_code == 200
            assert "RunSpec" in client.get("/api/v1/openapi.json").json()["components"]["schemas"]
            assert client.get("/api/v1/runs").json() == []
        imported = subprocess.run(
            [str(python), "-c", "import app.main, json, sys; print(json.dumps(sorted(sys.modules)))"],
            cwd=elsewhere,
            env=env,
            check=True,
            capture_output=True,
        )
        assert not {name for name in json.loads(imported.stdout) if name.split(".")[0] in ML_LIBRARIES}
    finally:
        web.terminate()
        web.wait(timeout=30)
