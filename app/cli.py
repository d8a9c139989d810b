"""The `loradeck` command.

`up` starts everything on embedded defaults; `web`, `worker` and `migrate` run one part each.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

from app.config import REPO_ROOT, get_settings
from app.services import start_redis, wait_for_redis

TRAINER_QUEUES = "train,merge"
INSPECTOR_QUEUES = "inspect"
# Commands that need the ML libraries run in the worker package, in a process of their own.
WORKER_COMMANDS = ("train", "estimate", "validate-dataset")


def worker_command(queues: str = TRAINER_QUEUES, name: str = "trainer") -> list[str]:
    """A Celery worker. Training and merging run one task at a time (a run per GPU process); the
    inspect queue (estimates, dataset descriptions) is quick work served by a few threads."""
    pool = ["--pool", "threads", "--concurrency", "2"] if queues == INSPECTOR_QUEUES else ["--pool", "solo"]
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues, *pool,
        "--hostname", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def web_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]


def cmd_migrate(_: argparse.Namespace) -> int:
    from app.db import migrate

    migrate()
    print(f"database at head: {get_settings().resolved_database_url}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, worker_command(args.queues, name="inspector" if args.queues == "inspect" else "worker"))


def run_in_worker_package(command: str, argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker.cli", command, *argv])


def bind(args: argparse.Namespace) -> tuple[str, int]:
    """Where the web app listens; the web process reads the same host to decide whether login is needed."""
    from app.security import login_problem

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    os.environ["LORADECK_HOST"] = host
    get_settings.cache_clear()
    problem = login_problem(get_settings())
    if problem:
        raise SystemExit(f"loradeck: {problem}")
    return host, port


def cmd_web(args: argparse.Namespace) -> int:
    host, port = bind(args)
    os.execv(sys.executable, web_command(host, port))


def cmd_hash_password(_: argparse.Namespace) -> int:
    import getpass

    from app.security import hash_password

    password = getpass.getpass("admin password: ")
    if len(password) < 12:
        raise SystemExit("loradeck: use at least 12 characters")
    if getpass.getpass("again: ") != password:
        raise SystemExit("loradeck: the two passwords differ")
    print(f"LORADECK_ADMIN_PASSWORD_HASH='{hash_password(password)}'")
    return 0


def cmd_token(_: argparse.Namespace) -> int:
    from app.security import new_api_token

    token, digest = new_api_token()
    print(f"API token (shown once; send as `Authorization: Bearer <token>`):\n  {token}")
    print(f"add its digest to LORADECK_API_TOKEN_HASHES (comma-separated):\n  {digest}")
    return 0


class Supervisor:
    """Starts the children of `loradeck up`, restarts a worker that dies, stops them all in order."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def spawn(self, name: str, args: list[str]) -> None:
        # Own session: Ctrl-C reaches only `up`, which then stops the children in a safe order.
        self.children[name] = subprocess.Popen(args, env=self.env, cwd=REPO_ROOT, start_new_session=True)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        for name in ("web", "inspector", "trainer", "redis"):
            process = self.children.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print(f"loradeck: {name} did not stop within 20 s; killing it", file=sys.stderr)
                process.kill()
                process.wait()


def wait_for_web(url: str, web: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and web.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False


def cmd_up(args: argparse.Namespace) -> int:
    host, port = bind(args)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from app.db import migrate

    migrate()
    env = dict(os.environ, PYTHONUNBUFFERED="1", REDIS_URL=settings.redis_url)
    supervisor = Supervisor(env)
    signal.signal(signal.SIGINT, supervisor.stop)
    signal.signal(signal.SIGTERM, supervisor.stop)
    try:
        if "REDIS_URL" in os.environ:
            wait_for_redis(settings.redis_url)
        else:
            redis_port = urlparse(settings.redis_url).port or 6390
            supervisor.children["redis"] = start_redis(port=redis_port, directory=settings.data_dir / "redis")
        supervisor.spawn("trainer", worker_command(TRAINER_QUEUES, "trainer"))
        supervisor.spawn("inspector", worker_command(INSPECTOR_QUEUES, "inspector"))
        supervisor.spawn("web", web_command(host, port))
        url = f"http://{host}:{port}"
        if not wait_for_web(url, supervisor.children["web"]):
            print("loradeck: the web app did not start; see the messages above", file=sys.stderr)
            return 1
        print(
            f"\n  loradeck is up: {url}\n  data dir: {settings.data_dir.resolve()}\n  Ctrl-C stops it.\n",
            flush=True,
        )
        while not supervisor.stopping:
            time.sleep(0.5)
            if supervisor.children["web"].poll() is not None:
                print("loradeck: the web app exited; stopping", file=sys.stderr)
                return 1
            for name, queues in (("trainer", TRAINER_QUEUES), ("inspector", INSPECTOR_QUEUES)):
                if supervisor.children[name].poll() is not None and not supervisor.stopping:
                    print(f"loradeck: the {name} worker exited; starting a new one", file=sys.stderr)
                    time.sleep(2)
                    supervisor.spawn(name, worker_command(queues, name))
        return 0
    finally:
        supervisor.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loradeck", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start Redis, a worker and the web app on embedded defaults")
    web = commands.add_parser("web", help="serve the web app only")
    for sub in (up, web):
        sub.add_argument("--host", help="address to bind (default: the host setting, 127.0.0.1)")
        sub.add_argument("--port", type=int, help="port to listen on (default: the port setting, 8000)")
    worker = commands.add_parser("worker", help="run one Celery worker")
    worker.add_argument(
        "--queues",
        default=TRAINER_QUEUES,
        help=f"comma-separated queues: {TRAINER_QUEUES} (default; one task at a time) or {INSPECTOR_QUEUES}",
    )
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("hash-password", help="hash an admin password for LORADECK_ADMIN_PASSWORD_HASH")
    commands.add_parser("token", help="make an API token and the digest to allow it")
    commands.add_parser("train", help="train a run from a spec file (YAML or JSON), without the web", add_help=False)
    commands.add_parser("estimate", help="parameter counts and memory estimate for a spec file", add_help=False)
    commands.add_parser("validate-dataset", help="check a dataset file row by row and describe it", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in WORKER_COMMANDS:
        return run_in_worker_package(argv[0], argv[1:])
    args = parser.parse_args(argv)
    handlers = {
        "up": cmd_up,
        "web": cmd_web,
        "worker": cmd_worker,
        "migrate": cmd_migrate,
        "hash-password": cmd_hash_password,
        "token": cmd_token,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
