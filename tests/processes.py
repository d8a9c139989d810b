"""The stack's processes as a user starts them, each a subprocess in this checkout: `loradeck migrate`, Celery
workers (`loradeck worker`) and the web app (uvicorn). The one place that starts them, for the stack fixture,
the fault tests, the many-workers fleet and the web alone."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parent.parent


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the web app at `url` answers /healthz; fails at once if its process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"web server exited with code {process.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Processes:
    """Processes started with one environment, their logs in `root`; `close` stops whatever still runs."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root, self.env = root, dict(env)
        self.started: list[subprocess.Popen[bytes]] = []

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=self.env, cwd=REPO, check=True)

    def start_worker(self, *args: str, log: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`loradeck worker ARGS`, its output added to the file `log` in root; `env` adds to the environment."""
        with (self.root / log).open("ab") as out:
            return self._start(["-m", "app.cli", "worker", *args], out=out, env=self.env | dict(env or {}))

    def start_web(self, port: int, *, log: str | None = None) -> subprocess.Popen[bytes]:
        """uvicorn on 127.0.0.1:`port`, returned once it answers; its output added to the file `log` in root,
        or, without one, to the test's own."""
        command = ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
        with (self.root / log).open("ab") if log else nullcontext() as out:
            web = self._start(command, out=out, env=self.env)
        wait_http(f"http://127.0.0.1:{port}", web)
        return web

    def _start(self, args: list[str], *, out: IO[bytes] | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
        stderr = None if out is None else subprocess.STDOUT
        process = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=out, stderr=stderr)
        self.started.append(process)
        return process

    def close(self, timeout: float = 30) -> None:
        """SIGTERM to every process still running, the last started first, then SIGKILL to any that has not
        exited within `timeout`."""
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
