"""`loradeck up`: migrations, a private Redis, a worker and the web app; Ctrl-C stops every child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from app.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def test_up_serves_the_form_and_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    web_port, redis_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_URL")} | {
        "LORADECK_DATA_DIR": str(tmp_path / "data"),
        "LORADECK_PORT": str(web_port),
        # Not REDIS_URL: `up` reads the private Redis's port from this setting and starts that server.
        "LORADECK_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{web_port}"
        output = b""
        deadline = time.monotonic() + 90
        while b"Ctrl-C stops it" not in output:
            assert time.monotonic() < deadline and up.poll() is None, output.decode()
            output += up.stdout.readline()  # type: ignore[union-attr]
        assert url.encode() in output
        lines = output.decode().splitlines()
        # One clean summary: the URL within the first lines, no Celery banner or worker log in the terminal.
        assert any(url in line for line in lines[:3]), lines
        text = output.decode()
        assert "celery@" not in text and "[config]" not in text and "-------------- " not in text, text
        logs = tmp_path / "data" / "logs"
        assert str(logs) in text
        deadline = time.monotonic() + 30
        while b"ready" not in (logs / "trainer.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert b"celery@" in (logs / "trainer.log").read_bytes() or b"ready" in (logs / "trainer.log").read_bytes()
        assert (logs / "web.log").is_file() and (logs / "inspector.log").is_file()
        page = httpx.get(url + "/runs/new", timeout=10)
        assert page.status_code == 200 and 'name="lora_alpha"' in page.text
        assert httpx.get(url + "/healthz", timeout=10).json()["ok"] is True
        icon = httpx.get(url + "/favicon.ico", timeout=10)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        children = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert "redis-server" in names and "uvicorn" in names
        assert "-Q train,merge" in names and "-Q inspect" in names
        assert (tmp_path / "data" / "loradeck.db").is_file()
        # The private Redis asks for the password generated into the data dir, and keeps it off the command line.
        password = tmp_path / "data" / "redis_password"
        assert password.stat().st_mode & 0o077 == 0
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port).ping()
        assert redis.Redis(port=redis_port, password=password.read_text().strip()).ping()
        assert password.read_text().strip() not in names

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        rest = up.stdout.read().decode()  # type: ignore[union-attr]
        assert "celery@" not in rest and "Traceback" not in rest, rest
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"
    finally:
        if up.poll() is None:
            up.kill()
