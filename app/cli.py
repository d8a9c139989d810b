"""The `loradeck` command.

`up` starts everything on embedded defaults; `web`, `worker` and `migrate` run one part each.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from app.config import REPO_ROOT, get_settings
from app.processes import redis_password, start_redis, wait_for_redis

TRAINER_QUEUES = "train,merge"
INSPECTOR_QUEUES = "inspect"
GENERATOR_QUEUES = "generate"  # the playground: its own process, so answers come while a run trains
# The workers `loradeck up` starts: name and queues.
UP_WORKERS = (("trainer", TRAINER_QUEUES), ("inspector", INSPECTOR_QUEUES), ("generator", GENERATOR_QUEUES))
# Commands that need the ML libraries run in the worker package, in a process of their own.
WORKER_COMMANDS = ("train", "estimate", "validate-dataset")


def worker_command(queues: str = TRAINER_QUEUES, name: str = "trainer", *, exact_name: bool = False) -> list[str]:
    """A Celery worker. Training and merging run one task at a time (a run per GPU process); the
    inspect queue (estimates, dataset descriptions) is quick work served by a few threads.
    Its node name is `<name>-<pid>@<host>`, or `<name>@<host>` with `exact_name`."""
    pool = ["--pool", "threads", "--concurrency", "2"] if queues == INSPECTOR_QUEUES else ["--pool", "solo"]
    node = f"{name}@%h" if exact_name else f"{name}-{os.getpid()}@%h"
    return [
        sys.executable, "-m", "celery", "-A", "worker.runtime.celery_app", "worker", "-Q", queues, *pool,
        "--hostname", node, "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def queue_names(value: str) -> str:
    """`--queues`: comma-separated names of app.queue.Queue; a typo would leave a worker waiting on a queue
    nobody sends to."""
    from app.queue import Queue

    names = [name.strip() for name in value.split(",") if name.strip()]
    known = [queue.value for queue in Queue]
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue {', '.join(unknown) or '(none)'}; the queues: {', '.join(known)}"
        )
    return ",".join(names)


def worker_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise argparse.ArgumentTypeError("use letters, digits, '.', '_' and '-' (the host is added after an '@')")
    return value


def web_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]


def cmd_migrate(_: argparse.Namespace) -> int:
    from app.db import migrate

    migrate()
    print(f"database at head: {get_settings().resolved_database_url}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.check:
        return check_worker(args.name)
    name = args.name or ("inspector" if args.queues == INSPECTOR_QUEUES else "worker")
    os.execv(sys.executable, worker_command(args.queues, name, exact_name=args.name is not None))


def check_worker(name: str | None) -> int:
    """Exit 0 when a worker on this host (the one called `name`, if given) sent its heartbeat lately.

    For container health checks: `celery inspect ping` goes unanswered while a solo worker runs a task,
    which for a training worker is most of its life; the heartbeat thread keeps beating meanwhile."""
    import redis

    from app.workers import HEARTBEAT_S, list_workers

    host, settings = socket.gethostname(), get_settings()
    target = urlparse(settings.redis_url)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        workers = list_workers(client)
    except redis.RedisError as exc:  # the URL may hold a password: name only the server
        print(f"loradeck: Redis at {target.hostname}:{target.port or 6379} unreachable: {exc}", file=sys.stderr)
        return 1
    wanted = f"{name}@{host}" if name else None
    live = [
        record
        for record in workers
        if record.host == host and wanted in (None, record.name) and record.age < 3 * HEARTBEAT_S
    ]
    if not live:
        print(f"loradeck: no heartbeat from {wanted or 'a worker on ' + host} in the last {3 * HEARTBEAT_S:.0f} s")
        return 1
    for record in live:
        print(f"{record.name}: heartbeat {record.age:.1f} s ago, queues {','.join(record.queues)}")
    return 0


def run_in_worker_package(command: str, argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker.cli", command, *argv])


def bind(args: argparse.Namespace) -> tuple[str, int]:
    """Where the web app listens; the web process reads the same host to decide whether login is needed."""
    from app.web.security import login_problem

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    os.environ["LORADECK_HOST"] = host
    get_settings.cache_clear()
    problem = login_problem(get_settings())
    if problem:
        raise SystemExit(f"loradeck: {problem}")
    return host, port


def cmd_web(args: argparse.Namespace) -> int:
    from app.db import schema_problem

    host, port = bind(args)
    problem = schema_problem()  # said here in one line; app.main's startup refuses it too, under plain uvicorn
    if problem:
        raise SystemExit(f"loradeck: {problem}")
    os.execv(sys.executable, web_command(host, port))


def cmd_hash_password(_: argparse.Namespace) -> int:
    import getpass

    from app.web.security import hash_password

    password = getpass.getpass("admin password: ")
    if len(password) < 12:
        raise SystemExit("loradeck: use at least 12 characters")
    if getpass.getpass("again: ") != password:
        raise SystemExit("loradeck: the two passwords differ")
    print(f"LORADECK_ADMIN_PASSWORD_HASH='{hash_password(password)}'")
    return 0


def cmd_token(_: argparse.Namespace) -> int:
    from app.web.security import new_api_token

    token, digest = new_api_token()
    print(f"API token (shown once; send as `Authorization: Bearer <token>`):\n  {token}")
    print(f"add its digest to LORADECK_API_TOKEN_HASHES (comma-separated):\n  {digest}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys for OpenAI's API under /v1 with login on, in the configured database (as the settings page)."""
    from app.db import get_sessionmaker, schema_problem
    from app.errors import DomainError
    from app.services import api_keys

    problem = schema_problem()
    if problem:
        raise SystemExit(f"loradeck: {problem}")

    def when(moment: datetime | None) -> str:
        return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"

    with get_sessionmaker()() as session:
        try:
            if args.keys_command == "create":
                row, key = api_keys.create_key(session=session, name=args.name)
                print(f"API key {row.id} ({row.name}), shown once; give it to a script as the OpenAI api_key:\n  {key}")
            elif args.keys_command == "revoke":
                row = api_keys.revoke_key(session=session, key_id=args.id)
                print(f"revoked {row.id} ({row.name}, {row.prefix}...) at {when(row.revoked_at)}")
            elif not (listed := api_keys.list_keys(session=session)):
                print("no API keys yet: `loradeck keys create --name NAME` makes one")
            else:
                print(f"{'ID':<12}  {'NAME':<24}  {'PREFIX':<15}  {'CREATED':<20}  {'LAST USED':<20}  REVOKED")
                for row in listed:
                    print(
                        f"{row.id:<12}  {row.name[:24]:<24}  {row.prefix + '...':<15}  {when(row.created_at):<20}  "
                        f"{when(row.last_used_at):<20}  {when(row.revoked_at)}"
                    )
        except DomainError as exc:
            raise SystemExit(f"loradeck: {exc}") from None
    return 0


class Supervisor:
    """Starts the children of `loradeck up`, restarts a worker that dies, stops them all in order."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def spawn(self, name: str, args: list[str]) -> None:
        # Own session: Ctrl-C reaches only `up`, which then stops the children in a safe order. Each child
        # writes to its own log file, so the terminal shows only the summary.
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as log:
            self.children[name] = subprocess.Popen(
                args, env=self.env, cwd=REPO_ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self, *_: object) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        for name in ("web", "generator", "inspector", "trainer", "redis"):
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


def up_summary(url: str, data_dir: Path, supervisor: Supervisor) -> str:
    """What `loradeck up` prints once the web answers: the URL first, then where everything is."""
    workers = ", ".join(f"{name} ({queues})" for name, queues in UP_WORKERS)
    return (
        f"loradeck is up: {url}\n"
        f"  data dir: {data_dir}\n"
        f"  workers:  {workers}\n"
        f"  logs:     {supervisor.log_dir}/{{web,trainer,inspector,generator}}.log"
        f"  (follow them: tail -f {supervisor.log_dir}/*.log)\n"
        "  Ctrl-C stops it."
    )


def cmd_up(args: argparse.Namespace) -> int:
    host, port = bind(args)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from app.db import migrate

    migrate()
    redis_url, private = settings.redis_url, "REDIS_URL" not in os.environ
    if private:  # the private Redis asks for a password, so another local user cannot read or queue runs
        target = urlparse(redis_url)
        password = redis_password(settings.data_dir)
        redis_url = f"redis://:{password}@127.0.0.1:{target.port or 6390}{target.path or '/0'}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", REDIS_URL=redis_url)
    supervisor = Supervisor(env, settings.data_dir.resolve() / "logs")
    signal.signal(signal.SIGINT, supervisor.stop)
    signal.signal(signal.SIGTERM, supervisor.stop)
    try:
        if not private:
            wait_for_redis(redis_url)
        else:
            redis_port = urlparse(redis_url).port or 6390
            supervisor.children["redis"] = start_redis(
                port=redis_port, directory=settings.data_dir / "redis", password=password
            )
        for name, queues in UP_WORKERS:
            supervisor.spawn(name, worker_command(queues, name))
        supervisor.spawn("web", web_command(host, port))
        url = f"http://{host}:{port}"
        if not wait_for_web(url, supervisor.children["web"]):
            print(f"loradeck: the web app did not start; see {supervisor.log_path('web')}", file=sys.stderr)
            return 1
        print(up_summary(url, settings.data_dir.resolve(), supervisor), flush=True)
        while not supervisor.stopping:
            time.sleep(0.5)
            if supervisor.children["web"].poll() is not None:
                print("loradeck: the web app exited; stopping", file=sys.stderr)
                return 1
            for name, queues in UP_WORKERS:
                if supervisor.children[name].poll() is not None and not supervisor.stopping:
                    print(
                        f"loradeck: the {name} worker exited (see {supervisor.log_path(name)}); starting a new one",
                        file=sys.stderr,
                    )
                    time.sleep(2)
                    supervisor.spawn(name, worker_command(queues, name))
        return 0
    finally:
        supervisor.shutdown()


def build_parser() -> argparse.ArgumentParser:
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
        type=queue_names,
        help=f"comma-separated queues: {TRAINER_QUEUES} (default; one task at a time) or {INSPECTOR_QUEUES}",
    )
    worker.add_argument(
        "--name",
        type=worker_name,
        help="node name before the '@<host>', as the workers page shows it (default: worker-<pid> or inspector-<pid>)",
    )
    worker.add_argument(
        "--check",
        action="store_true",
        help="start nothing: exit 0 when a worker on this host (the one called --name, if given) sent a "
        "heartbeat in the last 15 s, else 1; for container health checks",
    )
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("hash-password", help="hash an admin password for LORADECK_ADMIN_PASSWORD_HASH")
    commands.add_parser("token", help="make an API token and the digest to allow it")
    keys = commands.add_parser("keys", help="API keys for OpenAI's API under /v1 (with login on, it takes only these)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="make a key and print it, once (only its SHA-256 is kept)")
    create.add_argument("--name", default="", help="what uses it, to tell keys apart (default: unnamed)")
    key_commands.add_parser("list", help="id, name, prefix, created, last used and revoked of every key")
    revoke = key_commands.add_parser("revoke", help="refuse the key from now on")
    revoke.add_argument("id", help="the key's id, as `loradeck keys list` shows it")
    commands.add_parser("train", help="train a run from a spec file (YAML or JSON), without the web", add_help=False)
    commands.add_parser("estimate", help="parameter counts and memory estimate for a spec file", add_help=False)
    commands.add_parser("validate-dataset", help="check a dataset file row by row and describe it", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in WORKER_COMMANDS:
        return run_in_worker_package(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {
        "up": cmd_up,
        "web": cmd_web,
        "worker": cmd_worker,
        "migrate": cmd_migrate,
        "hash-password": cmd_hash_password,
        "token": cmd_token,
        "keys": cmd_keys,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
